"""Broadcast cost per recipient in kichat.sio, at 1,000 and 10,000 recipients.

Two measurements of the same broadcast (a realistic ~500-byte chat event to one room):

* ``userspace``: every recipient's transport discards what it is given, so the figure is the
  server's own work per recipient (queueing the shared frame, the flusher's write call) without
  the kernel's. This is the part the design controls.
* ``sockets``: real WebSocket clients (``bench/loadclient.c``, one process, one epoll loop) on
  loopback; the figure is the server process's CPU (user + system) per delivered message,
  including the ``send()`` system calls, and the clients' latency.

    python bench/broadcast.py                       # both, 1k and 10k recipients
    python bench/broadcast.py --mode sockets --recipients 1000 --messages 200 --rate 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from harness import build_loadclient

from kichat.http import HttpServer, Request, Response, WebSocketUpgrade
from kichat.sio import Ack, Server, Socket
from kichat.sio.connection import WEBSOCKET, Connection

EVENT = "App\\Events\\ChatMessageEvent"


def chat(seq: int) -> dict[str, Any]:
    return {
        "id": f"5f0c2b1e-8a3d-4c55-9e7a-{seq:012d}",
        "chatroom_id": 700000,
        "content": f"{seq} {time.time_ns()}",
        "type": "message",
        "created_at": "2026-03-02T19:04:11+00:00",
        "sender": {
            "id": 55012345,
            "username": "PixelMoth",
            "slug": "pixelmoth",
            "identity": {
                "color": "#75FD46",
                "badges": [{"type": "subscriber", "text": "Subscriber", "count": 4}],
            },
        },
        "metadata": {"message_ref": "1772478251093"},
        "channel_name": "chan0",
    }


def cpu() -> float:
    t = os.times()
    return t.user + t.system


class _NullWebSocket:
    """Stands in for a client transport that swallows everything: user-space cost only."""

    __slots__ = ("writes",)

    def __init__(self) -> None:
        self.writes = 0

    def write(self, frames: bytes) -> None:
        self.writes += 1


async def userspace(recipients: int, messages: int) -> dict[str, float]:
    sio = Server()
    nsp = sio.of("/")
    request = Request("GET", "/socket.io/", {}, b"", "127.0.0.1")
    for i in range(recipients):
        conn = Connection(sio, f"c{i}", request, WEBSOCKET)
        conn.ws = _NullWebSocket()  # type: ignore[assignment]
        nsp._connect(conn, {})
        sock = conn.sockets["/"]
        nsp._accept(sock, conn)
        sock.join("room")
    sio._flush()  # the CONNECT replies
    before = cpu()
    for seq in range(messages):
        nsp.emit(EVENT, chat(seq), to="room")
        while sio._flush_handle is not None:  # let the chunked flusher finish this broadcast
            await asyncio.sleep(0)
    spent = cpu() - before
    return {"us_per_recipient": spent / (recipients * messages) * 1e6}


async def sockets(recipients: int, messages: int, rate: float) -> dict[str, Any]:
    sio = Server()
    nsp = sio.of("/")

    @nsp.on("subscribe")
    def subscribe(sock: Socket, args: list[Any], ack: Ack | None) -> None:
        sock.join("room")

    async def handler(request: Request) -> Response | WebSocketUpgrade:
        return await sio.handle(request)

    http = HttpServer(handler)
    await sio.start()
    await http.start("127.0.0.1", 0)
    client = await asyncio.create_subprocess_exec(
        str(build_loadclient()), "--port", str(http.port), "--clients", str(recipients),
        "--rooms", "1", "--progress", "0", stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert client.stdout is not None
    try:
        ready = json.loads(await asyncio.wait_for(client.stdout.readline(), 120))
        assert ready.get("event") == "ready", ready
        while nsp.room_size("room") < recipients:
            await asyncio.sleep(0.05)
        await asyncio.sleep(1)
        stats = sio.stats
        writes0, deliveries0, before = stats.writes, stats.deliveries, cpu()
        for seq in range(1, messages + 1):
            nsp.emit(EVENT, chat(seq), to="room")
            await asyncio.sleep(1 / rate if rate else 0)
        while sio._flush_handle is not None or any(c.queue for c in sio.sessions.values()):
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.5)  # the kernel hands the last bytes over
        spent = cpu() - before
        writes, deliveries = stats.writes - writes0, stats.deliveries - deliveries0
        client.send_signal(signal.SIGUSR1)
        summary = json.loads(await asyncio.wait_for(client.stdout.readline(), 30))
    finally:
        if client.returncode is None:
            client.kill()
        await client.wait()
        await sio.close()
        await http.close(grace_period=1)
    return {
        "us_per_delivery": spent / deliveries * 1e6,
        "deliveries": deliveries,
        "delivered_by_clients": summary.get("delivered"),
        "packets_per_write": deliveries / max(1, writes),
        "latency_ms": summary.get("latency_ms"),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--mode", choices=("userspace", "sockets"), action="append")
    ap.add_argument("--recipients", type=int, action="append")
    ap.add_argument("--messages", type=int, default=0, help="default: 200 at 1k, 50 at 10k")
    ap.add_argument("--rate", type=float, default=20.0, help="broadcasts per second (sockets)")
    args = ap.parse_args()
    import uvloop

    for mode in args.mode or ["userspace", "sockets"]:
        for n in args.recipients or [1000, 10000]:
            count = args.messages or (200 if n <= 1000 else 50)
            if mode == "userspace":
                result = uvloop.run(userspace(n, count))
                print(f"userspace  {n:>6} recipients x {count} broadcasts: "
                      f"{result['us_per_recipient']:.2f} us per recipient", flush=True)  # fmt: skip
            else:
                result = uvloop.run(sockets(n, count, args.rate))
                print(f"sockets    {n:>6} recipients x {count} broadcasts at {args.rate:g}/s: "
                      f"{result['us_per_delivery']:.2f} us per delivery, "
                      f"{result['packets_per_write']:.2f} packets per write, clients got "
                      f"{result['delivered_by_clients']}/{result['deliveries']}, latency ms "
                      f"{result['latency_ms']}", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
