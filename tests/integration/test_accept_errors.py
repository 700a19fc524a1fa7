"""A process out of file descriptors logs its failed accepts once per interval, never a flood."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

SCRIPT = Path(__file__).with_name("emfile_server.py")
INTERVAL = 1.0
SECONDS = 3.0


def test_accept_errors_past_the_file_limit_are_one_warning_per_interval(tmp_path: Path) -> None:
    """Thousands of EMFILE accept errors make at most one `server.accept_failed` line per interval, whose
    counts add up, and no traceback; the output stays a few kilobytes."""
    out_path = tmp_path / "out.log"
    with out_path.open("wb") as out:
        proc = subprocess.Popen([sys.executable, str(SCRIPT), str(INTERVAL), str(SECONDS)], stdout=out,
                                stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                cwd=Path(__file__).parents[2])
    clients: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 30
        while not out_path.read_text().strip() and time.monotonic() < deadline:
            time.sleep(0.02)
        port = json.loads(out_path.read_text().splitlines()[0])["port"]
        for _ in range(20):  # queued by the kernel: each makes the listener readable, accept fails
            clients.append(socket.create_connection(("127.0.0.1", port)))
        assert proc.wait(60) == 0
    finally:
        for c in clients:
            c.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = out_path.read_text()
    assert "Traceback" not in text and "out of system resource" not in text
    assert len(text) < 8192, f"{len(text)} bytes of output in {SECONDS} s"
    lines = [json.loads(line) for line in text.splitlines()]
    warnings = [e for e in lines if e.get("event") == "server.accept_failed"]
    total = next(e["accept_errors"] for e in lines if "accept_errors" in e)
    assert total >= 1000, "the listener was flooded with failed accepts"
    # the flood, then the retries asyncio still had pending when the listener closed: one more interval
    assert 1 <= len(warnings) <= SECONDS / INTERVAL + 2
    assert warnings[0]["error"] == "EMFILE"
    assert {w["error"] for w in warnings} <= {"EMFILE", "retry_after_close"}
    assert all(w["level"] == "warning" for w in warnings)
    assert len(warnings) + sum(w["suppressed"] for w in warnings) <= total
