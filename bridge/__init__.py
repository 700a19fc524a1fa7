"""ticketbridge: verify, store and deliver inbound events as helpdesk and CRM tickets."""

from __future__ import annotations

__version__ = "0.1.0"
USER_AGENT = f"ticketbridge/{__version__}"
"""What every request ticketbridge makes says it is (not aiohttp's default, which names Python's and aiohttp's
versions)."""
