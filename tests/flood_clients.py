"""A hostile flood for the security tests: N connections on one CURVE key, each calling
``echo.sleep`` again the moment its last call is answered (refused or not), never backing off.

    python tests/flood_clients.py ENDPOINT SECRET_KEY SERVER_KEY CONNECTIONS SECONDS

Prints one JSON line: calls answered, accepted and refused (Overloaded), by the end.
"""

from __future__ import annotations

import json
import sys

import trio

from specmemo.protocol import Overloaded
from specmemo.protocol.client import AsyncClient
from specmemo.protocol.curve import client_keys


async def flood(endpoint: str, curve: dict, connections: int, seconds: float) -> dict[str, int]:
    counts = {"accepted": 0, "refused": 0}

    async def one() -> None:
        async with AsyncClient(endpoint, timeout=30, curve=curve) as c:
            while True:
                try:
                    await c.call("echo", "sleep", seconds=0.2)
                    counts["accepted"] += 1
                except Overloaded:
                    counts["refused"] += 1

    with trio.move_on_after(seconds):
        async with trio.open_nursery() as nursery:
            for _ in range(connections):
                nursery.start_soon(one)
    return counts


def main() -> None:
    endpoint, secret, server, connections, seconds = sys.argv[1:6]
    counts = trio.run(flood, endpoint, client_keys(secret, server), int(connections), float(seconds))
    print(json.dumps(counts), flush=True)


if __name__ == "__main__":
    main()
