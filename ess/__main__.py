"""``python -m ess``: the same as the ``ess`` command."""

from ess.cli import main

raise SystemExit(main())
