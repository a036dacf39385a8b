"""The capacity benchmark on its own: ``python -m bench.capacity --help``."""

from bench.capacity import main

raise SystemExit(main())
