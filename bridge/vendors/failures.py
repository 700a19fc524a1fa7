"""What a vendor call made before the request itself (a look-up, a log-in) can fail with."""

from __future__ import annotations

from bridge.errors import BridgeError


class VendorUnavailable(BridgeError):
    """A look-up the request needs could not be made now; the delivery is retried."""


class VendorAuthFailed(BridgeError):
    """The vendor refused the destination's credentials during a look-up or log-in; the delivery is dead (auth)."""


class VendorBusy(VendorUnavailable):
    """A look-up the request needs was answered with when to come back (a 503 with Retry-After): the delivery is
    retried no sooner than `retry_after` seconds, the destination not paused, as after a send answered so."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class VendorRateLimited(VendorBusy):
    """A look-up the request needs was refused for the vendor's rate limit (a 429, or the vendor's own rate-limit
    answer): the delivery is retried, and the destination paused for `retry_after` seconds (None: its rate window),
    as after a send refused so."""
