"""``python -m serlib`` is the same as the ``serlib`` command."""

from serlib.cli import main

raise SystemExit(main())
