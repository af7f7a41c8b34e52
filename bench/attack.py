"""Hostile clients against a real ``kichat serve``: what each attack costs the server.

Starts the Kick simulator and the gateway (default settings, the per-IP limits raised because
every client here comes from 127.0.0.1), then runs the attacks one after the other while a
probe measures what an ordinary client sees, and samples the gateway's RSS throughout:

``request-line``  a request line that never ends (``GET /aaaa...``), sent as fast as possible
``header``        a header value that never ends, in 1 KiB writes
``trickle``       a request head trickled a few bytes at a time (slowloris)
``pipeline``      ``GET /healthz`` pipelined nonstop on one connection that never reads
``fragments``     a WebSocket text message continued by endless empty continuation frames
``slow-readers``  Socket.IO clients subscribed to a busy chatroom that never read

and, not run by default, a control: ``readers``, the same clients and traffic as
``slow-readers`` but read as they come (what the traffic alone leaves in memory).

For each attack it prints how the server answered (status line, close code, bytes it took
before refusing), the probe's worst and 99th-percentile latency for ``GET /healthz`` during the
attack, and the gateway's RSS before, at its peak and after. At the end it waits ``--settle``
seconds with no connections open and prints the RSS over that time, to see whether memory the
attacks made the process take comes back.

    .venv/bin/python bench/attack.py                         # every attack, 60 s settle
    .venv/bin/python bench/attack.py --attacks pipeline,header --duration 5 --settle 20
    .venv/bin/python bench/attack.py --attacks readers            # the control
    .venv/bin/python bench/attack.py --json out.json

Stdlib only (plus the installed project, started as child processes that are killed on exit).
Traffic goes to 127.0.0.1 only; every attack stops by itself after ``--duration`` seconds.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import selectors
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness import (
    Children,
    Sim,
    flags,
    free_port,
    gateway_stats,
    raise_nofile,
    tree_rss_kib,
    wait_listening,
)

PUSHER_KEY = "32cbd69e4b950bf97679"
CHATROOM = 700000
HANDSHAKE = (
    "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n"
)


# ------------------------------------------------------------------ measuring


class Probe(threading.Thread):
    """An ordinary client: ``GET /healthz`` every 20 ms on one keep-alive connection, timed."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.samples: list[tuple[float, float]] = []  # (monotonic time, latency s)
        self.stop = threading.Event()

    def run(self) -> None:
        sock: socket.socket | None = None
        while not self.stop.is_set():
            start = time.monotonic()
            try:
                if sock is None:
                    sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                reply = b""
                while b"\r\n\r\n" not in reply or not reply.endswith(b"}"):
                    chunk = sock.recv(4096)
                    if not chunk:
                        raise ConnectionError("closed")
                    reply += chunk
            except OSError:
                if sock is not None:
                    sock.close()
                sock = None
                self.samples.append((start, time.monotonic() - start))
                continue
            self.samples.append((start, time.monotonic() - start))
            self.stop.wait(0.02)
        if sock is not None:
            sock.close()

    def window(self, since: float, until: float) -> dict[str, float]:
        lat = sorted(s for t, s in self.samples if since <= t <= until)
        if not lat:
            return {"probes": 0}
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
        return {
            "probes": len(lat),
            "median_ms": round(statistics.median(lat) * 1000, 1),
            "p99_ms": round(p99 * 1000, 1),
            "max_ms": round(lat[-1] * 1000, 1),
        }


class RssSampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.samples: list[tuple[float, int]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.samples.append((time.monotonic(), tree_rss_kib(self.pid)))
            self.stop.wait(0.1)

    def peak(self, since: float, until: float) -> int:
        return max((r for t, r in self.samples if since <= t <= until), default=0)


# ------------------------------------------------------------------ attacks


def held_on_purpose(port: int) -> dict[str, int]:
    """What the gateway keeps by design after the attacks (``/stats``): the recovery log's bytes
    (publications kept for ``socketio.recovery_window`` so that a client back within it gets
    what it missed) and the sessions still waiting to be recovered."""
    try:
        clients = gateway_stats(port, timeout=5)["clients"]
    except (OSError, ValueError, KeyError):
        return {}
    return {k: clients[k] for k in ("recovery_log_bytes", "detached_sockets") if k in clients}


def slow_clients_cut_off(port: int) -> int:
    """The gateway's count of clients it cut off for not reading (``/stats``)."""
    count: int = gateway_stats(port, timeout=5)["sio"]["slow_clients"]
    return count


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _reader(sock: socket.socket, into: list[bytes]) -> threading.Thread:
    def run() -> None:
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue  # the socket's timeout is for sending; keep listening
            except OSError:
                break
            if not chunk:
                break
            into.append(chunk)
        into.append(b"")  # end of stream

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _flood(sock: socket.socket, first: bytes, more: Callable[[], bytes], duration: float,
           reply: list[bytes]) -> dict[str, Any]:  # fmt: skip
    """Send ``first`` then ``more()`` until the server hangs up or ``duration`` passes."""
    sent = 0
    ended = "duration"
    deadline = time.monotonic() + duration
    sock.settimeout(1.0)
    data = first
    while time.monotonic() < deadline:
        if reply and reply[-1] == b"":
            ended = "server closed"
            break
        try:
            n = sock.send(data)
        except TimeoutError:
            continue  # the server is not reading: keep trying until the deadline
        except OSError as exc:
            ended = f"server closed ({type(exc).__name__})"
            break
        sent += n
        data = data[n:] or more()
    return {"bytes_sent": sent, "ended": ended}


def _status(reply: list[bytes]) -> str:
    head = b"".join(reply)
    return head.split(b"\r\n", 1)[0].decode("latin-1") if head else "(nothing)"


def attack_request_line(port: int, duration: float) -> dict[str, Any]:
    sock = _connect(port)
    reply: list[bytes] = []
    _reader(sock, reply)
    block = b"a" * 65536
    result = _flood(sock, b"GET /", lambda: block, duration, reply)
    sock.close()
    return {**result, "reply": _status(reply)}


def attack_header(port: int, duration: float) -> dict[str, Any]:
    sock = _connect(port)
    reply: list[bytes] = []
    _reader(sock, reply)
    block = b"a" * 1024
    result = _flood(sock, b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: ", lambda: block, duration, reply)
    sock.close()
    return {**result, "reply": _status(reply)}


def attack_trickle(port: int, duration: float) -> dict[str, Any]:
    """Slowloris: a valid head, 4 bytes every 100 ms, never finished."""
    sock = _connect(port)
    reply: list[bytes] = []
    _reader(sock, reply)
    start = time.monotonic()
    sent = 0
    ended = "duration"
    with contextlib.suppress(OSError):
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        while time.monotonic() - start < duration:
            if reply and reply[-1] == b"":
                ended = "server closed"
                break
            sock.sendall(b"X-a:")
            sock.sendall(b"b\r\n")
            sent += 7
            time.sleep(0.1)
    sock.close()
    held = round(time.monotonic() - start, 1)
    return {"bytes_sent": sent, "ended": ended, "held_s": held, "reply": _status(reply)}


def attack_pipeline(port: int, duration: float) -> dict[str, Any]:
    sock = _connect(port)
    block = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 2000
    result = _flood(sock, block, lambda: block, duration, [])
    sock.close()
    return result


def _ws_open(port: int, path: str) -> socket.socket:
    sock = _connect(port)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(HANDSHAKE.format(path=path, key=key).encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError(f"handshake refused: {head[:80]!r}")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(f"handshake refused: {head[:80]!r}")
    return sock


def _masked(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    n = len(payload)
    length = bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack(">H", n)
    return bytes([(0x80 if fin else 0) | opcode]) + length + mask + body


def _close_code(reply: list[bytes]) -> str:
    data = b"".join(reply)
    # the first server frame after the Engine.IO open packet that is a close frame
    pos = 0
    while pos + 2 <= len(data):
        opcode, n = data[pos] & 0x0F, data[pos + 1] & 0x7F
        head = 2
        if n == 126:
            n, head = struct.unpack(">H", data[pos + 2 : pos + 4])[0], 4
        elif n == 127:
            n, head = struct.unpack(">Q", data[pos + 2 : pos + 10])[0], 10
        if opcode == 0x8:
            body = data[pos + head : pos + head + n]
            return str(struct.unpack(">H", body[:2])[0]) if len(body) >= 2 else "1005"
        pos += head + n
    return "(no close frame)"


def attack_fragments(port: int, duration: float) -> dict[str, Any]:
    sock = _ws_open(port, "/socket.io/?EIO=4&transport=websocket")
    reply: list[bytes] = []
    _reader(sock, reply)
    empty = b"\x00\x80" + b"\x00\x00\x00\x00"  # masked, empty, not final continuation frame
    block = empty * 10000
    result = _flood(sock, _masked(0x1, b"4", fin=False), lambda: block, duration, reply)
    sock.close()
    return {**result, "frames": result["bytes_sent"] // len(empty), "close": _close_code(reply)}


def attack_slow_readers(port: int, duration: float, *, sim: Sim, clients: int) -> dict[str, Any]:
    return _busy_room(port, duration, sim=sim, clients=clients, reading=False)


def control_readers(port: int, duration: float, *, sim: Sim, clients: int) -> dict[str, Any]:
    """Not an attack: the same clients and traffic as ``slow-readers``, read as they come. Run
    alone (``--attacks readers``), it shows what the traffic itself leaves in memory."""
    return _busy_room(port, duration, sim=sim, clients=clients, reading=True)


def _drain(socks: list[socket.socket], stop: threading.Event) -> threading.Thread:
    def run() -> None:
        with selectors.DefaultSelector() as sel:
            for sock in socks:
                sock.setblocking(False)
                sel.register(sock, selectors.EVENT_READ)
            while not stop.is_set():
                for key, _ in sel.select(0.1):
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    try:
                        if not sock.recv(1 << 20):
                            sel.unregister(sock)
                    except BlockingIOError:
                        pass
                    except OSError:
                        sel.unregister(sock)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _busy_room(
    port: int, duration: float, *, sim: Sim, clients: int, reading: bool
) -> dict[str, Any]:
    socks = []
    for _ in range(clients):
        sock = _ws_open(port, "/socket.io/?EIO=4&transport=websocket")
        if not reading:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(_masked(0x1, b"40"))
        subscribe = {"channelName": "chan0", "chatroomId": str(CHATROOM)}
        sock.sendall(_masked(0x1, b"42" + json.dumps(["subscribe", subscribe]).encode()))
        socks.append(sock)
    sim.wait_subscribed([CHATROOM], 10)
    cut_before = slow_clients_cut_off(port)
    stop = threading.Event()
    drainer = _drain(socks, stop) if reading else None
    sim.start_bench([CHATROOM], rate=2000, duration=duration)
    deadline = time.monotonic() + duration + 1
    while time.monotonic() < deadline and sim.bench().get("running"):
        time.sleep(0.2)
    if drainer is not None:
        time.sleep(1)  # the last messages
        stop.set()
        drainer.join()
    for sock in socks:
        sock.close()
    # Counted by the server: a client cut off with bytes still in the kernel's send buffer is
    # not told at once (the kernel keeps delivering them), so the client side cannot tell.
    cut_off = slow_clients_cut_off(port) - cut_before
    return {"clients": clients, "cut_off": cut_off, "published": sim.bench().get("published")}


ATTACKS: dict[str, Callable[..., dict[str, Any]]] = {
    "request-line": attack_request_line,
    "header": attack_header,
    "trickle": attack_trickle,
    "pipeline": attack_pipeline,
    "fragments": attack_fragments,
    "slow-readers": attack_slow_readers,
}
# Not attacks, and not run by default: what the same traffic costs without an attacker.
CONTROLS: dict[str, Callable[..., dict[str, Any]]] = {"readers": control_readers}


# ------------------------------------------------------------------ the run


def run_help(args: list[str]) -> str:
    """What ``kichat <args>`` prints (to adapt to the version measured)."""
    proc = subprocess.run([sys.executable, "-m", "kichat", *args], capture_output=True,
                          text=True, check=False)  # fmt: skip
    return proc.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--attacks", default=",".join(ATTACKS), help="comma-separated names")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per attack")
    parser.add_argument("--settle", type=float, default=60.0, help="seconds watched after")
    parser.add_argument("--slow-clients", type=int, default=50)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="a gateway setting (kichat serve --set)")  # fmt: skip
    args = parser.parse_args()
    names = [n.strip() for n in args.attacks.split(",") if n.strip()]
    runs = ATTACKS | CONTROLS
    unknown = [n for n in names if n not in runs]
    if unknown:
        parser.error(f"unknown attacks: {', '.join(unknown)} (known: {', '.join(runs)})")
    raise_nofile(args.slow_clients + 64)

    children = Children(Path(tempfile.mkdtemp(prefix="kichat-attack-")))
    results: dict[str, Any] = {"attacks": {}, "settings": args.set}
    try:
        sim_port, port = free_port(), free_port()
        sim_proc = children.start(
            "sim", [sys.executable, "-m", "kichat.sim", "--port", str(sim_port)]
        )
        wait_listening(sim_proc, sim_port, "simulator", 30)
        query = "protocol=7&client=js&version=8.4.0&flash=false"
        argv = [sys.executable, "-m", "kichat", "serve", *flags(
            port=port, pusher_url=f"ws://127.0.0.1:{sim_port}/app/{PUSHER_KEY}?{query}",
            kick_api_url=f"http://127.0.0.1:{sim_port}",
        )]  # fmt: skip
        for setting in args.set:
            argv += ["--set", setting]
        env = {"KICHAT_LIMITS_CONNECTIONS_PER_IP": "1000000",
               "KICHAT_LIMITS_REST_PER_MINUTE": "1000000"}  # fmt: skip
        if "pending_connections_per_ip" in run_help(["check-config", "--list"]):
            env["KICHAT_LIMITS_PENDING_CONNECTIONS_PER_IP"] = "1000000"
        gateway = children.start("gateway", argv, env=env)
        wait_listening(gateway, port, "gateway", 30)
        sim = Sim(sim_port)
        rss = RssSampler(gateway.pid)
        rss.start()
        probe = Probe(port)
        probe.start()
        time.sleep(2)  # warm-up: imports done, the probe's connection open
        baseline = tree_rss_kib(gateway.pid)
        results["rss_before_kib"] = baseline
        print(f"gateway pid {gateway.pid}, RSS before: {baseline / 1024:.1f} MiB", flush=True)
        for name in names:
            start = time.monotonic()
            busy_room = name in ("slow-readers", "readers")
            extra = {"sim": sim, "clients": args.slow_clients} if busy_room else {}
            outcome = runs[name](port, args.duration, **extra)
            end = time.monotonic()
            time.sleep(0.5)
            entry = {
                **outcome,
                "seconds": round(end - start, 1),
                "probe": probe.window(start, end),
                "rss_peak_kib": rss.peak(start, end + 0.5),
                "rss_after_kib": tree_rss_kib(gateway.pid),
            }
            results["attacks"][name] = entry
            print(f"{name}: {json.dumps(entry)}", flush=True)
        settle_start = time.monotonic()
        timeline = []
        held = []
        while (elapsed := time.monotonic() - settle_start) < args.settle:
            timeline.append((round(elapsed), tree_rss_kib(gateway.pid)))
            held.append(held_on_purpose(port))
            time.sleep(min(5.0, max(0.1, args.settle - elapsed)))
        timeline.append((round(time.monotonic() - settle_start), tree_rss_kib(gateway.pid)))
        held.append(held_on_purpose(port))
        results["rss_settle_kib"] = timeline
        results["held_on_purpose"] = held
        final = timeline[-1][1]
        results["rss_final_ratio"] = round(final / baseline, 2)
        print("RSS while settling (s, MiB, recovery log MiB, detached sessions): " + ", ".join(
            f"{t}: {r / 1024:.0f} ({h.get('recovery_log_bytes', 0) / 2**20:.1f}, "
            f"{h.get('detached_sockets', '?')})" for (t, r), h in zip(timeline, held, strict=True)
        ), flush=True)  # fmt: skip
        print(f"RSS after {timeline[-1][0]} s: {final / 1024:.1f} MiB "
              f"({results['rss_final_ratio']}x before)", flush=True)  # fmt: skip
        probe.stop.set()
        rss.stop.set()
    finally:
        children.stop_all()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
