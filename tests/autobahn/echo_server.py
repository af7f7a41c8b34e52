"""A WebSocket echo endpoint on kichat.http, for Autobahn|Testsuite (``make autobahn``).

Every path accepts a WebSocket; text comes back as text and binary as binary. Messages up to
64 MiB are accepted (the suite's largest is 16 MiB), and the write limit is as large, so that
the performance cases (9.*) measure the codec and not our flow control.

    .venv/bin/python tests/autobahn/echo_server.py --port 9001
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

from kichat.http import HttpServer, Request, Response, WebSocket, WebSocketUpgrade

MAX_MESSAGE = 64 * 1024 * 1024


class Echo:
    def __init__(self, sock: WebSocket) -> None:
        self.sock = sock

    def on_message(self, data: str | bytes) -> None:
        if isinstance(data, str):
            self.sock.send_text(data)
        else:
            self.sock.send_binary(data)

    def on_close(self, code: int, reason: str) -> None:
        pass

    def on_pause_writing(self) -> None:
        pass

    def on_resume_writing(self) -> None:
        pass


async def handler(request: Request) -> Response | WebSocketUpgrade:
    if request.headers.get("upgrade", "").lower() != "websocket":
        return Response.text("a WebSocket echo endpoint\n")
    return WebSocketUpgrade(Echo, max_message_size=MAX_MESSAGE, write_limit=MAX_MESSAGE)


async def main(host: str, port: int) -> None:
    server = HttpServer(handler, max_body_size=1024)
    await server.start(host, port)
    print(f"echo server on ws://{host}:{server.port}/", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.close(grace_period=1.0)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9001)
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    args = parser.parse_args()
    if args.loop == "uvloop":
        import uvloop

        uvloop.install()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(args.host, args.port))
