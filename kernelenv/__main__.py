"""``python -m kernelenv``: the command line."""

from .cli import main

raise SystemExit(main())
