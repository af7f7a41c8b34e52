"""The server the official Socket.IO protocol test suite expects (socketio/socket.io-protocol,
``test-suite/``): port 3000 by default, ping interval 300 ms, ping timeout 200 ms, max payload
1,000,000, connect timeout 1,000 ms, CORS open, namespaces ``/`` and ``/custom``, an ``auth``
event echoing the handshake auth, ``message`` echoed as ``message-back`` and
``message-with-ack`` acknowledged with its own arguments. Connection state recovery is off,
as in the reference fixture (the suite expects a CONNECT reply holding only ``sid``).

The suite in socketio/socket.io-protocol registers its next ``message`` listener only after the
previous message was handled, so two packets that arrive in one TCP read lose the second. Our
writes are coalesced on purpose, and even the reference Node server (socket.io 4.8.1, one write
per packet) fails those tests intermittently on a loaded machine. The maintained copy of the
suite in socketio/socket.io (``docs/socket.io-protocol/v5-test-suite``) buffers events; it runs
against the default fixture, i.e. production write coalescing. ``--per-packet-writes`` makes the
fixture write one packet per ``send()``, 5 ms apart, so the older suite runs deterministically.

    python -m kichat.sio.conformance --port 3000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from typing import Any

from kichat.http import HttpServer, Request, Response, WebSocketUpgrade
from kichat.sio import Ack, Server, Socket


def build(*, per_packet_writes: bool = False) -> Server:
    sio = Server(
        coalesce_writes=not per_packet_writes,
        packet_spacing=0.005,
        ping_interval=0.3,
        ping_timeout=0.2,
        max_payload=1_000_000,
        connect_timeout=1.0,
        cors_origins=("*",),
        recovery=False,
        # The suite connects from one address, many sessions at a time.
        pending_per_client=1000,
    )
    for name in ("/", "/custom"):
        nsp = sio.of(name)

        @nsp.on_connect
        def connect(sock: Socket, auth: dict[str, Any]) -> None:
            sock.emit("auth", auth)

        @nsp.on("message")
        def message(sock: Socket, args: list[Any], ack: Ack | None) -> None:
            sock.emit("message-back", *args)

        @nsp.on("message-with-ack")
        def message_with_ack(sock: Socket, args: list[Any], ack: Ack | None) -> None:
            if ack is not None:
                ack(*args)

    return sio


async def serve(host: str, port: int, *, per_packet_writes: bool = False) -> None:
    sio = build(per_packet_writes=per_packet_writes)

    async def handler(request: Request) -> Response | WebSocketUpgrade:
        if request.path.startswith("/socket.io/") or request.path == "/socket.io":
            return await sio.handle(request)
        return Response.error(404, "not_found", "no such path")

    http = HttpServer(handler)
    await sio.start()
    await http.start(host, port)
    logging.getLogger("kichat.sio").info("conformance fixture on http://%s:%d", host, http.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await sio.close()
    await http.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=3000)
    ap.add_argument("--per-packet-writes", action="store_true", help="one send() per packet")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    asyncio.run(serve(args.host, args.port, per_packet_writes=args.per_packet_writes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
