"""Hostile-client measurements for issue 8 (items 3, 4, 6): what one client costs the gateway.

    python bench/front_door.py nesting        # nested JSON: status codes, close frames, log bytes
    python bench/front_door.py handshakes     # Engine.IO sessions and RSS one address can create
    python bench/front_door.py slow-reader    # bytes held for a client that stops reading

``nesting`` and ``handshakes`` run ``python -m kichat serve`` (whatever ``kichat`` the
interpreter imports, so ``PYTHONPATH=<other checkout>/src`` measures another version) with its
defaults, upstream pointed at a closed local port; extra ``--set name=value`` flags are passed
on. ``slow-reader`` builds the Socket.IO server in-process. Loopback only; numbers vary with the
machine's load, so repeat them.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import fcntl
import json
import os
import re
import socket
import struct
import sys
import tempfile
import termios
import time
from typing import Any

import httpx
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

# ---------------------------------------------------------------------------------- a gateway


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def new_log() -> tuple[Any, str]:
    """A file for the gateway's log (the child writes to it until it ends), and its path."""
    log = tempfile.NamedTemporaryFile(prefix="kichat-front-door-", suffix=".log", delete=False)  # noqa: SIM115
    return log, log.name


def size(path: str) -> int:
    return os.path.getsize(path)


async def start_gateway(extra: list[str], log: Any) -> tuple[asyncio.subprocess.Process, int]:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kichat", "serve", "--port", str(port),
        "--pusher-url", "ws://127.0.0.1:9/app/none", "--set", "limits.rest_per_minute=1000000",
        *extra, stdout=log, stderr=log,
    )  # fmt: skip
    for _ in range(200):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
        else:
            writer.close()
            return proc, port
    raise SystemExit("the gateway did not start; see " + log.name)


async def stop_gateway(proc: asyncio.subprocess.Process) -> None:
    proc.terminate()
    await proc.wait()


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) * 1024
    return 0


# ----------------------------------------------------------------------------------- nesting


async def nesting(args: argparse.Namespace) -> None:
    log, log_path = new_log()
    proc, port = await start_gateway(args.set, log)
    base = f"http://127.0.0.1:{port}/socket.io/?EIO=4&transport=polling"
    deep = '42["x",' + "[" * args.depth + "]" * args.depth + "]"
    binary = '451-["x",' + "[" * args.depth + '{"_placeholder":true,"num":0}' + "]" * args.depth
    binary += "]\x1ebAQID"
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            logged = size(log_path)
            for name, body in (("polling", deep), ("polling, binary path", binary)):
                sid = json.loads((await http.get(base)).text[1:])["sid"]
                await http.post(f"{base}&sid={sid}", content="40")
                await http.get(f"{base}&sid={sid}")
                reply = await http.post(f"{base}&sid={sid}", content=body)
                print(f"{name}: {len(body)} bytes -> HTTP {reply.status_code} {reply.text[:60]}")
            url = f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket"
            async with connect(url) as ws:
                await ws.recv()
                await ws.send("40")
                await ws.recv()
                await ws.send(deep)
                try:
                    while True:
                        await asyncio.wait_for(ws.recv(), 5)
                except (ConnectionClosed, TimeoutError) as exc:
                    frame = ws.protocol.close_rcvd
                    print(f"websocket: {type(exc).__name__}, close frame received: {frame}")
            await asyncio.sleep(0.5)
            print(f"log written for the three packets: {size(log_path) - logged} bytes")
    finally:
        await stop_gateway(proc)


# -------------------------------------------------------------------------------- handshakes

_REQUEST = b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\n\r\n"
_LENGTH = re.compile(rb"\r\ncontent-length: *(\d+)", re.I)


async def _handshaker(port: int, deadline: float, statuses: dict[int, int]) -> None:
    """Pipelines polling handshakes 8 at a time on one keep-alive connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    buf = b""
    while time.monotonic() < deadline:
        writer.write(_REQUEST * 8)
        answered = 0
        while answered < 8:
            data = await reader.read(65536)
            if not data:
                return
            buf += data
            while (head_end := buf.find(b"\r\n\r\n")) >= 0:
                length = _LENGTH.search(buf, 0, head_end)
                end = head_end + 4 + (int(length.group(1)) if length else 0)
                if len(buf) < end:
                    break
                status = int(buf[9:12])
                statuses[status] = statuses.get(status, 0) + 1
                buf = buf[end:]
                answered += 1
    writer.close()


async def handshakes(args: argparse.Namespace) -> None:
    log, _ = new_log()
    proc, port = await start_gateway(args.set, log)
    try:
        await asyncio.sleep(0.5)
        before = rss(proc.pid)
        statuses: dict[int, int] = {}
        deadline = time.monotonic() + args.duration
        await asyncio.gather(*(_handshaker(port, deadline, statuses) for _ in range(args.conns)))
        after = rss(proc.pid)
        async with httpx.AsyncClient() as http:
            clients = (await http.get(f"http://127.0.0.1:{port}/stats")).json()["clients"]
        print(f"polling handshakes in {args.duration:g} s from one address: {statuses}")
        pending = clients.get("pending_connections")
        print(f"sessions held: {clients['connections']} (pending: {pending})")
        mib = 2**20
        grew = (after - before) / mib
        print(f"RSS {before / mib:.1f} MiB -> {after / mib:.1f} MiB (+{grew:.1f} MiB)")
    finally:
        await stop_gateway(proc)


# ------------------------------------------------------------------------------- slow reader


def _outq(fd: int) -> int:
    return struct.unpack("i", fcntl.ioctl(fd, termios.TIOCOUTQ, b"\0\0\0\0"))[0]


async def slow_reader(args: argparse.Namespace) -> None:
    from kichat.http import HttpServer, Request, Response, WebSocketUpgrade
    from kichat.sio import Server

    sio = Server(outbound_buffer_limit=args.limit)

    async def handler(request: Request) -> Response | WebSocketUpgrade:
        return await sio.handle(request)

    http = HttpServer(handler, send_buffer_size=args.sndbuf or None)
    await sio.start()
    await http.start("127.0.0.1", 0)
    loop = asyncio.get_running_loop()
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.setblocking(False)
    try:
        await loop.sock_connect(client, ("127.0.0.1", http.port))
        key = base64.b64encode(os.urandom(16))
        await loop.sock_sendall(
            client,
            b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: x\r\n"
            b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Key: " + key + b"\r\n\r\n",
        )
        await loop.sock_recv(client, 4096)

        def masked(text: bytes) -> bytes:
            mask = os.urandom(4)
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(text))
            return bytes([0x81, 0x80 | len(text)]) + mask + payload

        await loop.sock_sendall(client, masked(b"40"))
        nsp = sio.of("/")
        while not nsp.sockets:
            await asyncio.sleep(0.01)
        next(iter(nsp.sockets.values())).join("room")
        conn = next(iter(sio.sessions.values()))
        ws = conn.ws
        assert ws is not None
        fd = ws.transport.get_extra_info("socket").fileno()
        kernel_cap = ws.transport.get_extra_info("socket").getsockopt(
            socket.SOL_SOCKET, socket.SO_SNDBUF
        )
        peak = [0, 0]  # gateway, gateway + kernel: right after every write

        class Gauge:
            def __getattr__(self, name: str) -> Any:
                return getattr(ws, name)

            def write(self, data: bytes) -> None:
                ws.write(data)
                held = ws.write_buffer_size
                peak[0] = max(peak[0], held)
                peak[1] = max(peak[1], held + _outq(fd))

        conn.ws = Gauge()  # type: ignore[assignment]
        payload = "x" * args.size
        sent = 0
        while not conn.closed:
            for _ in range(args.burst):
                nsp.emit("chat", payload, to="room")
                sent += args.size
            while conn.dirty:
                await asyncio.sleep(0.001)
        mib = 2**20
        print(
            f"limit {args.limit / mib:.2f} MiB, SO_SNDBUF {kernel_cap / mib:.2f} MiB (as the "
            f"kernel reports it), bursts of {args.burst} x {args.size} B: cut off after "
            f"{sent / mib:.2f} MiB; held at most {peak[0] / mib:.2f} MiB in the gateway, "
            f"{peak[1] / mib:.2f} MiB with the kernel's send queue"
        )
    finally:
        client.close()
        await sio.close()
        await http.close(grace_period=1)


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    p = sub.add_parser("nesting")
    p.add_argument("--depth", type=int, default=1000)
    p.add_argument("--set", action="append", default=[], type=lambda v: f"--set={v}")
    p = sub.add_parser("handshakes")
    p.add_argument("--duration", type=float, default=12.0)
    p.add_argument("--conns", type=int, default=16)
    p.add_argument("--set", action="append", default=[], type=lambda v: f"--set={v}")
    p = sub.add_parser("slow-reader")
    p.add_argument("--limit", type=int, default=4 * 2**20)
    p.add_argument("--sndbuf", type=int, default=256 * 1024, help="0: the kernel's autotuning")
    p.add_argument("--size", type=int, default=16_000)
    p.add_argument("--burst", type=int, default=1, help="broadcasts per flush")
    args = ap.parse_args()
    import uvloop

    run = {"nesting": nesting, "handshakes": handshakes, "slow-reader": slow_reader}[args.what]
    uvloop.run(run(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
