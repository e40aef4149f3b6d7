"""Allow ``python -m spanmetrics``."""

from spanmetrics.cli import main

raise SystemExit(main())
