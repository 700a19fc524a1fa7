"""`ticketbridge doctor`: per destination, one harmless authenticated look-up (never a create), and in plain
words whether host, keys and permissions work, with the fix for each broken setup."""

from __future__ import annotations

import asyncio
from typing import Literal

import aiohttp
import msgspec

from bridge.delivery.exchange import redact_url
from bridge.sandbox_identity import sandbox_problem
from bridge.vendors import kapture_doctor
from bridge.vendors.base import Adapter, Diagnosis, VendorAuthFailed, VendorRequest, VendorUnavailable, read_capped
from bridge.vendors.credentials import authorized
from bridge.vendors.kapture import KaptureAdapter

REFUSED = (401, 403)  # a look-up answer that asks for new credentials, where they have a lifetime
READ_BYTES = 256 * 1024  # a look-up's answer is read this far; past it, the rest is not needed


class Finding(msgspec.Struct, kw_only=True):
    """One destination's check."""

    destination: str
    vendor: str
    state: Literal["ok", "failed", "skipped"]
    said: str
    fix: str | None = None
    request: str | None = None  # method and URL of the look-up (query secrets redacted)


def probe_of(adapter: Adapter) -> VendorRequest | str:
    if isinstance(adapter, KaptureAdapter):
        return kapture_doctor.doctor_request(adapter)
    return adapter.doctor_request()


def diagnosis_of(adapter: Adapter, status: int, headers: dict[str, str], body: bytes, truncated: bool) -> Diagnosis:
    if isinstance(adapter, KaptureAdapter):
        return kapture_doctor.diagnose(status, headers, body, truncated=truncated,
                                       key=kapture_doctor.key_name(adapter))
    return adapter.diagnose(status, headers, body)


async def _read(response: aiohttp.ClientResponse) -> tuple[bytes, bool]:
    return await read_capped(response, READ_BYTES)


async def examine(adapter: Adapter, session: aiohttp.ClientSession, timeout_s: float) -> Finding:
    """Check one destination: its credentials (a log-in, where it has one), then its look-up; logs out after."""
    name, vendor = adapter.name, adapter.vendor
    probe = probe_of(adapter)
    if isinstance(probe, str):
        return Finding(destination=name, vendor=vendor, state="skipped", said=probe)
    shown = f"{probe.method} {redact_url(probe.url)}"
    config = adapter.config
    if config.sandbox and config.base_url:  # a shared sandbox: nothing is sent to it before it answers as one
        why = await sandbox_problem(session, config.base_url, vendor, timeout_s)
        if why is not None:  # asked before any log-in: nothing to give back
            return Finding(destination=name, vendor=vendor, state="failed", request=shown,
                           said=f"base_url is not a ticketbridge sandbox: {why}; the server sends this destination "
                                "nothing until it is",
                           fix=f"point base_url at a `ticketbridge sandbox` (http://HOST:9090/{vendor}), or drop "
                               "`sandbox: true` for a real destination")
    try:
        try:  # the log-in first, so that its failure is told apart from the look-up's
            if adapter.credentials is not None:
                await adapter.credentials.headers(session)
        except VendorAuthFailed as exc:
            return Finding(destination=name, vendor=vendor, state="failed", request=shown,
                           said=f"the credentials were refused: {exc}")
        except (VendorUnavailable, TimeoutError, aiohttp.ClientError, OSError) as exc:
            return Finding(destination=name, vendor=vendor, state="failed", request=shown,
                           said=f"credentials could not be obtained: {type(exc).__name__}: {exc}",
                           fix="check base_url and that the vendor answers; then run doctor again")

        async def look(headers: dict[str, str]) -> tuple[int, dict[str, str], bytes, bool]:
            async with session.request(probe.method, probe.url, headers={**probe.headers, **headers},
                                       data=probe.body or None, allow_redirects=False,
                                       timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
                return (resp.status, dict(resp.headers), *await _read(resp))

        try:
            # As a delivery does: a token refused (revoked, expired early) is renewed and the look-up made once more.
            status, headers, body, truncated = await authorized(session, adapter.credentials, look,
                                                                lambda answer: answer[0] in REFUSED)
            diagnosis = diagnosis_of(adapter, status, headers, body, truncated)
        except VendorAuthFailed as exc:
            return Finding(destination=name, vendor=vendor, state="failed", request=shown,
                           said=f"the look-up was refused and new credentials were refused: {exc}")
        except VendorUnavailable as exc:
            return Finding(destination=name, vendor=vendor, state="failed", request=shown,
                           said=f"the look-up was refused and new credentials could not be obtained: {exc}",
                           fix="check base_url and that the vendor answers; then run doctor again")
        except TimeoutError:
            return Finding(destination=name, vendor=vendor, state="failed", request=shown,
                           said=f"no answer within {timeout_s:g} s",
                           fix="check base_url (host and port) and that this machine may reach it")
        except (aiohttp.ClientError, OSError) as exc:
            return Finding(destination=name, vendor=vendor, state="failed", request=shown,
                           said=f"the host cannot be reached: {type(exc).__name__}: {exc}",
                           fix="check base_url (host name, port, http/https) and that this machine may reach it")
    finally:
        await adapter.close(session)
    return Finding(destination=name, vendor=vendor, state="ok" if diagnosis.ok else "failed", request=shown,
                   said=diagnosis.said, fix=diagnosis.fix)


async def examine_all(adapters: list[Adapter], session: aiohttp.ClientSession, timeout_s: float) -> list[Finding]:
    """Check every destination at once; the findings in the order given, each destination's secrets redacted by
    value from what it says (a vendor may quote them back) and its URL shown as its attempts show it."""
    findings = await asyncio.gather(*(examine(a, session, timeout_s) for a in adapters))
    return [redacted(finding, adapter) for finding, adapter in zip(findings, adapters, strict=True)]


def redacted(finding: Finding, adapter: Adapter) -> Finding:
    """`finding` with `adapter`'s secrets redacted from what it says and from its look-up's URL."""
    matcher = adapter.redaction()
    request = finding.request
    if request is not None:
        method, _, url = request.partition(" ")
        request = f"{method} {adapter.redactor.url(url, matcher)}"
    return msgspec.structs.replace(finding, said=matcher.text(finding.said), request=request,
                                   fix=None if finding.fix is None else matcher.text(finding.fix))


def render(finding: Finding) -> str:
    """The finding as a person reads it: state, destination, what was found, the look-up, and the fix."""
    lines = [f"{finding.state.upper():8}{finding.destination} ({finding.vendor}): {finding.said}"]
    if finding.request:
        lines.append(f"        look-up: {finding.request}")
    if finding.fix:
        lines.append(f"        fix: {finding.fix}")
    return "\n".join(lines)
