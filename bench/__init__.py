"""Benchmarks of the exporter with numbers to beat: ``python -m bench.run --help``."""
