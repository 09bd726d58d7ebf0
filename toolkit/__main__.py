"""`python -m toolkit`: the same as the `toolkit` command."""

from toolkit.cli import main

raise SystemExit(main())
