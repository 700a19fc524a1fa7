"""`python -m bridge` runs the same CLI as the `ticketbridge` command."""

from __future__ import annotations

from bridge.cli import main

raise SystemExit(main())
