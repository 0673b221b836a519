"""``python -m gateway`` is the ``mailmoat`` command."""

from gateway.cli import main

raise SystemExit(main())
