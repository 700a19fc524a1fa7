"""ticketbridge: verify, store and deliver inbound events as helpdesk and CRM tickets."""

from __future__ import annotations

__version__ = "0.1.0"
