"""The measurement behind the gateway's HTTP/WebSocket stack (see README.md here).

Two minimal WebSocket broadcast servers, both on uvloop:

* ``raw``: an asyncio protocol with httptools parsing the handshake, then a protocol object per
  connection that holds only its transport (what ``kichat.http`` does);
* ``aiohttp``: aiohttp's server, either writing the pre-built frame to each connection's
  transport (``aiohttp-raw``) or using its public ``send_str`` (``aiohttp-send``).

For each: N idle clients connect (a C reader, ``reader.c``, so the client costs little), we read
the server's RSS before and after (memory per connection), then broadcast a 650-byte frame to all
of them 100 times, 50 ms apart, and read the server's CPU time (CPU per delivery).

    python stack_choice.py [--clients 2000]      # needs aiohttp (pip install aiohttp) and cc
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import gc
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
PAYLOAD = b'42["App\\\\Events\\\\ChatMessageEvent",{"content":"' + b"x" * 600 + b'"}]'


def frame(payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    return bytes((0x81, 126)) + n.to_bytes(2, "big") + payload


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def broadcast(writers: list[Any], rounds: int = 100) -> float:
    data = frame(PAYLOAD)
    before = cpu_seconds()
    for _ in range(rounds):
        for write in writers:
            write(data)
        await asyncio.sleep(0.05)
    return cpu_seconds() - before


# -- the raw asyncio-protocol server ----------------------------------------------------------


async def raw_server(port: int) -> list[Any]:
    """Returns the list of upgraded transports, filled as clients connect."""
    import httptools

    transports: list[Any] = []

    class Upgraded(asyncio.Protocol):
        __slots__ = ("transport",)

        def __init__(self, transport: Any) -> None:
            self.transport = transport

    class Handshake(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            self.key = b""
            self.parser = httptools.HttpRequestParser(self)

        def on_header(self, name: bytes, value: bytes) -> None:
            if name.lower() == b"sec-websocket-key":
                self.key = value

        def on_message_complete(self) -> None:
            accept = base64.b64encode(hashlib.sha1(self.key + GUID).digest())
            self.transport.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade"
                b"\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
            )
            self.transport.set_protocol(Upgraded(self.transport))
            transports.append(self.transport)

        def data_received(self, data: bytes) -> None:
            with contextlib.suppress(httptools.HttpParserUpgrade):
                self.parser.feed_data(data)

    loop = asyncio.get_running_loop()
    await loop.create_server(Handshake, "127.0.0.1", port, backlog=4096)
    return transports


# -- the aiohttp server -----------------------------------------------------------------------


async def aiohttp_server(port: int) -> list[Any]:
    """Returns the list of prepared WebSocketResponses, filled as clients connect."""
    from aiohttp import web

    sockets: list[Any] = []

    async def handler(request: Any) -> Any:
        ws = web.WebSocketResponse(autoping=True, compress=False)
        await ws.prepare(request)
        sockets.append(ws)
        async for _ in ws:
            pass
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=4096).start()
    return sockets


async def measure(kind: str, clients: int, port: int, reader: Path) -> dict[str, float]:
    gc.collect()
    base_rss = rss_kib()
    conns = await (raw_server(port) if kind == "raw" else aiohttp_server(port))
    proc = await asyncio.create_subprocess_exec(
        str(reader), str(port), str(clients), stdout=asyncio.subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 60
        while len(conns) < clients and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        await asyncio.sleep(1)
        gc.collect()
        per_conn = (rss_kib() - base_rss) / clients
        if kind == "raw":
            writers = [t.write for t in conns]
        elif kind == "aiohttp-raw":
            # Bypassing aiohttp's writer on purpose: the cost of the write itself.
            writers = [ws._writer.transport.write for ws in conns]
        else:
            text = PAYLOAD.decode()
            writers = [
                lambda _data, ws=ws: asyncio.ensure_future(ws.send_str(text)) for ws in conns
            ]
        cpu = await broadcast(writers)
        return {"kib_per_connection": per_conn, "us_per_delivery": cpu / (100 * clients) * 1e6}
    finally:
        proc.kill()
        await proc.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--clients", type=int, default=2000)
    ap.add_argument("--kind", choices=("raw", "aiohttp-raw", "aiohttp-send"), action="append")
    args = ap.parse_args()
    reader = Path("/tmp/kichat-stack-reader")
    subprocess.run(["cc", "-O2", "-o", str(reader), str(HERE / "reader.c")], check=True)
    kinds = args.kind or ["raw", "aiohttp-raw", "aiohttp-send"]
    if len(kinds) > 1:
        # One server per process, so memory figures do not mix.
        for i, kind in enumerate(kinds):
            command = [sys.executable, __file__, "--clients", str(args.clients), "--kind", kind]
            subprocess.run(command, check=True, env={**os.environ, "STACK_PORT": str(8765 + i)})
        return 0
    import uvloop

    port = int(os.environ.get("STACK_PORT", "8765"))
    result = uvloop.run(measure(kinds[0], args.clients, port, reader))
    print(f"{kinds[0]:13} clients={args.clients} {result['kib_per_connection']:.2f} KiB/connection "
          f"{result['us_per_delivery']:.1f} us/delivery", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
