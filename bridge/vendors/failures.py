"""What a vendor call made before the request itself (a look-up, a log-in) can fail with."""

from __future__ import annotations

from bridge.errors import BridgeError


class VendorUnavailable(BridgeError):
    """A look-up the request needs could not be made now; the delivery is retried."""


class VendorAuthFailed(BridgeError):
    """The vendor refused the destination's credentials during a look-up or log-in; the delivery is dead (auth)."""
