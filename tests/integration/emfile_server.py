"""A listener in a process out of file descriptors, with serve's accept-error handler installed.

Usage: emfile_server.py INTERVAL SECONDS. Prints its port, uses up every descriptor, runs SECONDS more
and exits, printing how many accepts failed; log lines go to stdout as serve's do.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import sys

from bridge.connections import ConnectionStats
from bridge.fdlimit import install_accept_error_handler
from bridge.logs import configure_logging


async def main(interval: float, seconds: float) -> None:
    configure_logging()
    stats = ConnectionStats()
    install_accept_error_handler(asyncio.get_running_loop(), stats, interval)
    server = await asyncio.start_server(lambda _r, _w: None, "127.0.0.1", 0, backlog=1024)  # as serve's
    port = server.sockets[0].getsockname()[1]
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
    held = []
    while True:
        try:
            held.append(os.open(os.devnull, os.O_RDONLY))
        except OSError:
            break
    print(json.dumps({"port": port}), flush=True)
    await asyncio.sleep(seconds)  # the flood's length, set by the test
    print(json.dumps({"accept_errors": stats.accept_errors}), flush=True)
    for fd in held:
        os.close(fd)
    server.close()


if __name__ == "__main__":
    asyncio.run(main(float(sys.argv[1]), float(sys.argv[2])))
