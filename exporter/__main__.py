"""``python -m exporter``: the same command line as ``llamacloud-exporter``."""

from .cli import main

raise SystemExit(main())
