"""The soak on its own: ``python -m bench.soak --help``."""

from bench.soak import main

raise SystemExit(main())
