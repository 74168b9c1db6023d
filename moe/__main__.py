"""`python -m moe` is the `moetb` command."""

from moe.cli.main import main

raise SystemExit(main())
