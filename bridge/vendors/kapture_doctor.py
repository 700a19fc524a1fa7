"""Kapture's check for `ticketbridge doctor`: a pull of today's tickets, the one documented read that takes
only a key (there is no "who am I" call). Each Kapture API has its own Auth Key and expiry, so this proves the
host and the key the pull is sent with; the add and update keys show themselves on their first delivery."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime

from bridge.vendors.base import Diagnosis, VendorRequest, excerpt
from bridge.vendors.kapture import KaptureAdapter, read_answer
from bridge.vendors.kapture_pull import NO_DATA, pull_request

KEY_FIX = ("renew or copy the pull API's key in Kapture (Configuration > Partner configuration > API configurations: "
           "each API has its own Auth Key and expiry date) and set the destination's {key}")
HOST_FIX = "set base_url to the account's Kapture address, e.g. https://<account>.kapturecrm.com"


def doctor_request(adapter: KaptureAdapter, today: Callable[[], date] = lambda: datetime.now(UTC).date()
                   ) -> VendorRequest:
    """Today's pull (one day, the API's smallest window; read-only)."""
    return pull_request(adapter, today())


def key_name(adapter: KaptureAdapter) -> str:
    """The setting the pull's key comes from: `tokens.pull` when set, else `token`."""
    return "tokens.pull" if adapter.options.tokens.pull else "token"


def diagnose(status: int, headers: Mapping[str, str], body: bytes, *, truncated: bool = False,
             key: str = "token") -> Diagnosis:
    """What the pull's answer says: a list (or "No Data found") is a working host and key; a body cut short
    at the read limit is a long list of tickets. `key` names the setting the pull's key came from."""
    if truncated and status == 200:
        return Diagnosis(ok=True, said="host and the pull API's key work (the answer was a long list of tickets)")
    outcome, parsed = read_answer(status, headers, body)
    error = outcome.error or ""
    if outcome.classification == "success" or NO_DATA in error.lower():
        return Diagnosis(ok=True, said="host and the pull API's key work (today's pull answered); the add and "
                                       "update APIs may have keys of their own")
    if outcome.classification == "auth":
        return Diagnosis(ok=False, said=f"the pull API's Auth Key ({key}) was refused (invalid, expired or "
                                        f"disabled): {error}", fix=KEY_FIX.format(key=key))
    if parsed is None or status == 404:
        return Diagnosis(ok=False, said=f"HTTP {status} that is not Kapture's JSON: this host does not serve "
                                        f"Kapture's API: {excerpt(body)}", fix=HOST_FIX)
    return Diagnosis(ok=False, said=f"the pull failed: {error}")
