"""``python -m vramobs``: the same as the ``vramobs`` command."""

from .cli import main

raise SystemExit(main())
