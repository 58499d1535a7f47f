"""`python -m sysclone`: the same as the `sysclone` command (from a checkout
that is not installed, or another interpreter's environment)."""

from sysclone.cli import main

raise SystemExit(main())
