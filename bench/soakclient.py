"""The soak's client swarm: thousands of raw Socket.IO v4 clients over WebSocket in one asyncio
loop, each living a churned life, with per-message accounting. Used by bench/soak.py.

Why raw: 2,000 python-socketio clients would cost more CPU than the gateway under test on a
2-core machine; these parse frames in place and keep a few microseconds per message, so that
one process of them costs a fraction of a core at the soak's rates. They speak exactly what
socket.io-client speaks on a WebSocket: the RFC 6455 handshake, Engine.IO ``0``/``2``/``3``,
Socket.IO ``40`` (with ``{"pid","offset"}`` to recover a session), ``42`` events with acks,
``41``; a recovered session is one whose CONNECT reply carries the client's own ``pid``.

Accounting: the simulator's bench traffic numbers each chatroom's messages (content
``"<seq> <publish_ns>"``). A client keeps, per subscription **period** (from its subscribe to
its unsubscribe, its clean disconnect, or a failed recovery), the sequence numbers it got. After
the run, a message counts as lost for a period if another client of the same chatroom got it,
it lies between the period's first and last message, and the period did not get it.
"""

from __future__ import annotations

import asyncio
import base64
import os
import random
import socket
from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

CHAT = "App\\Events\\ChatMessageEvent"
ROOM_BASE = 700000


@dataclass
class Period:
    """One subscription of one client to one chatroom, and what it received."""

    room: int
    healthy: bool
    seqs: array[int] = field(default_factory=lambda: array("I"))
    dups: int = 0
    ended: bool = False

    def add(self, seq: int) -> None:
        seqs = self.seqs
        # Out of order or a duplicate: rare, so a linear check is fine.
        if seqs and seq <= seqs[-1] and seq in seqs:
            self.dups += 1
            return
        seqs.append(seq)


@dataclass
class SwarmStats:
    connects: int = 0
    fresh_sessions: int = 0
    disconnects: int = 0  # clean, client-initiated
    drops: int = 0  # transport aborted by the client, then a recovering reconnect
    recovered: int = 0
    recovery_failed: int = 0
    unexpected_closes: int = 0  # the server closed a connection the client did not close
    connect_failures: int = 0
    subscribes: Counter[str] = field(default_factory=Counter)  # "ok" or an error code
    unsubscribes: int = 0
    strays: int = 0  # events of a chatroom the client had left (acknowledged)
    events: int = 0
    bad_frames: int = 0
    server_close_codes: Counter[int] = field(default_factory=Counter)  # close frames received


def mask_frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame."""
    key = os.urandom(4)
    n = len(payload)
    head = bytes([0x80 | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + n.to_bytes(8, "big")
    mask = int.from_bytes((key * (n // 4 + 1))[:n], "big") if n else 0
    body = (int.from_bytes(payload, "big") ^ mask).to_bytes(n, "big") if n else b""
    return head + key + body


class Conn(asyncio.Protocol):
    """One TCP connection of a client: WebSocket handshake, then frames."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.upgraded = False
        self.closed_by_client = False
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.client.conn = self  # before any byte of the answer can arrive
        key = base64.b64encode(os.urandom(16))
        transport.write(  # type: ignore[attr-defined]
            b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: soak\r\n"
            b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Key: " + key + b"\r\n\r\n"
        )

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                self.client.swarm.stats.connect_failures += 1
                self.abort()
                return
            del buf[: end + 4]
            self.upgraded = True
        pos, n = 0, len(buf)
        while n - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length, head = b1 & 0x7F, 2
            if length == 126:
                if n - pos < 4:
                    break
                length, head = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
            elif length == 127:
                if n - pos < 10:
                    break
                length, head = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
            if n - pos < head + length:
                break
            payload = bytes(buf[pos + head : pos + head + length])
            pos += head + length
            opcode = b0 & 0x0F
            if opcode == 1:
                self.client.on_text(payload)
            elif opcode == 8:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                self.client.swarm.stats.server_close_codes[code] += 1
                self.close()
            elif opcode == 9:
                self.send(10, payload)
            elif opcode != 10:
                self.client.swarm.stats.bad_frames += 1
        del buf[:pos]

    def send(self, opcode: int, payload: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(mask_frame(opcode, payload))

    def send_text(self, text: str | bytes) -> None:
        self.send(1, text.encode() if isinstance(text, str) else text)

    def close(self) -> None:
        self.closed_by_client = True
        self.send(8, (1000).to_bytes(2, "big"))
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.closed_by_client = True
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)
        self.client.on_lost(self)

    def pause(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()


class Client:
    """One logical client across its connections (a user with a browser tab, say)."""

    def __init__(self, swarm: Swarm, slow: bool) -> None:
        self.swarm = swarm
        self.slow = slow
        self.conn: Conn | None = None
        self.pid: str | None = None
        self.offset: str | None = None
        self.periods: dict[int, Period] = {}  # current subscriptions
        self.acks: dict[int, Callable[[Any], None]] = {}
        self.next_ack = 1
        self.connected = asyncio.Event()
        self.connect_reply: dict[str, Any] | None = None
        self.left: set[int] = set()  # chatrooms left, acknowledged

    # -- protocol --------------------------------------------------------------------------

    def on_text(self, payload: bytes) -> None:
        kind = payload[:1]
        if kind == b"4":
            self.on_socketio(payload)
        elif kind == b"2":
            assert self.conn is not None
            self.conn.send_text(b"3")
        elif kind == b"0":
            assert self.conn is not None
            auth = {"pid": self.pid, "offset": self.offset} if self.pid else {}
            self.conn.send_text(b"40" + orjson.dumps(auth))

    def on_socketio(self, payload: bytes) -> None:
        stats = self.swarm.stats
        kind = payload[1:2]
        if kind == b"2":
            try:
                args = orjson.loads(payload[2:])
            except orjson.JSONDecodeError:
                stats.bad_frames += 1
                return
            if args and args[0] == CHAT:
                stats.events += 1
                data = args[1]
                if len(args) > 2:
                    self.offset = args[-1]
                room = int(data["channel_name"][4:])
                period = self.periods.get(room)
                if period is None:
                    if room in self.left:
                        stats.strays += 1
                    return
                period.add(int(data["content"].split(" ", 1)[0]))
        elif kind == b"3":
            digits = 2
            while payload[digits : digits + 1].isdigit():
                digits += 1
            callback = self.acks.pop(int(payload[2:digits]), None)
            if callback is not None:
                callback(orjson.loads(payload[digits:])[0])
        elif kind == b"0":
            self.connect_reply = orjson.loads(payload[2:])
            self.connected.set()
        elif kind == b"4":
            self.connect_reply = {"error": orjson.loads(payload[2:])}
            self.connected.set()

    def emit(self, event: str, data: dict[str, str], callback: Callable[[Any], None]) -> None:
        if self.conn is None:
            return  # never connected: the subscription is made when it connects
        ident = self.next_ack
        self.next_ack += 1
        self.acks[ident] = callback
        self.conn.send_text(b"42" + str(ident).encode() + orjson.dumps([event, data]))

    def on_lost(self, conn: Conn) -> None:
        if conn is self.conn and not conn.closed_by_client:
            self.swarm.stats.unexpected_closes += 1
            self.swarm.spawn(self.reconnect(0.2))

    # -- actions ----------------------------------------------------------------------------

    async def connect(self) -> bool:
        """Open a connection and a Socket.IO session (recovering ``pid`` if there is one)."""
        loop = asyncio.get_running_loop()
        self.connected.clear()
        self.connect_reply = None
        self.acks.clear()
        try:
            sock = socket.socket()
            if self.slow:
                # Before connecting, so no autotuning: what the client does not read piles up
                # in the gateway, not in this kernel.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
            sock.setblocking(False)
            await loop.sock_connect(sock, (self.swarm.host, self.swarm.port))
            _, conn = await loop.create_connection(lambda: Conn(self), sock=sock)
        except OSError:
            sock.close()
            self.swarm.stats.connect_failures += 1
            return False
        self.conn = conn
        try:
            await asyncio.wait_for(self.connected.wait(), 30)
        except TimeoutError:
            self.swarm.stats.connect_failures += 1
            conn.abort()
            return False
        reply = self.connect_reply or {}
        if "error" in reply:
            self.swarm.stats.connect_failures += 1
            conn.abort()
            return False
        self.swarm.stats.connects += 1
        recovered = self.pid is not None and reply.get("pid") == self.pid
        if self.pid is not None:
            if recovered:
                self.swarm.stats.recovered += 1
            else:
                self.swarm.stats.recovery_failed += 1
        if not recovered:
            self.swarm.stats.fresh_sessions += 1
            rooms = list(self.periods)
            self.end_periods()
            self.pid, self.offset = reply.get("pid"), None
            for room in rooms:
                self.subscribe(room)
        return True

    def subscribe(self, room: int) -> None:
        self.left.discard(room)
        self.periods[room] = Period(room, healthy=not self.slow)
        data = {"channelName": f"chan{room}", "chatroomId": str(ROOM_BASE + room)}

        def answered(reply: Any) -> None:
            ok = isinstance(reply, dict) and reply.get("ok") is True
            self.swarm.stats.subscribes[
                "ok" if ok else str(reply.get("error", {}).get("code"))
            ] += 1

        self.emit("subscribe", data, answered)

    def unsubscribe(self, room: int) -> None:
        data = {"channelName": f"chan{room}", "chatroomId": str(ROOM_BASE + room)}
        current = self.periods.get(room)

        def answered(_: Any) -> None:
            self.swarm.stats.unsubscribes += 1
            if current is not None and self.periods.get(room) is current:
                del self.periods[room]
                self.swarm.finish(current)
                self.left.add(room)

        self.emit("unsubscribe", data, answered)

    def end_periods(self) -> None:
        for period in self.periods.values():
            self.swarm.finish(period)
        self.periods = {}

    async def drop(self, away: float) -> None:
        """A network blip: the TCP connection dies; back after ``away`` s, recovering."""
        if self.conn is None:
            return
        self.swarm.stats.drops += 1
        self.conn.abort()
        await self.reconnect(away)

    async def reconnect(self, delay: float) -> None:
        await asyncio.sleep(delay)
        for attempt in range(10):
            if self.swarm.stopping or await self.connect():
                return
            await asyncio.sleep(min(5.0, 0.5 * 2**attempt))

    async def leave(self) -> None:
        """A clean disconnect (a closed tab): the session ends."""
        if self.conn is None:
            return
        self.swarm.stats.disconnects += 1
        self.conn.send_text(b"41")
        self.conn.close()
        self.end_periods()
        self.pid = self.offset = None
        self.left.clear()
        await self.conn.lost


class Swarm:
    def __init__(self, host: str, port: int, rooms: int, rng: random.Random) -> None:
        self.host = host
        self.port = port
        self.rooms = rooms
        self.rng = rng
        self.stats = SwarmStats()
        self.clients: list[Client] = []
        self.finished: list[Period] = []
        self.stopping = False
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def finish(self, period: Period) -> None:
        period.ended = True
        self.finished.append(period)

    def connected_count(self) -> int:
        return sum(1 for c in self.clients if c.conn is not None and c.conn.transport is not None
                   and not c.conn.transport.is_closing())  # fmt: skip

    async def life(self, client: Client, churn: float, until: float) -> None:
        """A healthy client: one chatroom at a time; now and then it switches chatrooms, has
        a network blip (back within 3 s, recovering), or leaves and comes back as new."""
        rng, loop = self.rng, asyncio.get_running_loop()
        if not await client.connect():
            await client.reconnect(1.0)
        client.subscribe(rng.randrange(self.rooms))
        while loop.time() < until and not self.stopping:
            await asyncio.sleep(min(rng.expovariate(1 / churn), max(0.0, until - loop.time())))
            if loop.time() >= until or self.stopping:
                break
            action = rng.random()
            if action < 0.35:
                await client.drop(rng.uniform(0.2, 3.0))
            elif action < 0.7:
                old = next(iter(client.periods), None)
                if old is not None:
                    client.unsubscribe(old)
                client.subscribe((rng.randrange(1, self.rooms) + (old or 0)) % self.rooms)
            else:
                await client.leave()
                await asyncio.sleep(rng.uniform(0.5, 5.0))
                await client.reconnect(0)
                client.subscribe(rng.randrange(self.rooms))

    async def slow_life(self, client: Client, until: float) -> None:
        """A slow reader: every chatroom, and long pauses in reading (short enough to answer
        the server's pings in time; what piles up meanwhile may get it cut off)."""
        rng, loop = self.rng, asyncio.get_running_loop()
        if not await client.connect():
            await client.reconnect(1.0)
        for room in range(self.rooms):
            client.subscribe(room)
        while loop.time() < until and not self.stopping:
            if client.conn is not None:
                client.conn.pause()
            await asyncio.sleep(rng.uniform(5.0, 18.0))
            if client.conn is not None:
                client.conn.resume()
            await asyncio.sleep(rng.uniform(0.2, 1.0))

    async def close(self) -> None:
        self.stopping = True
        for client in self.clients:
            if client.conn is not None:
                client.conn.resume()
        for client in self.clients:
            client.end_periods()
            if client.conn is not None:
                client.conn.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def losses(periods: list[Period]) -> dict[str, Any]:
    """Loss accounting over every period (see the module docstring)."""
    union: dict[int, set[int]] = {}
    for p in periods:
        union.setdefault(p.room, set()).update(p.seqs)
    lost_by_period: list[int] = []
    dups = 0
    healthy = [p for p in periods if p.healthy and len(p.seqs) > 0]
    for p in healthy:
        lo, hi = min(p.seqs), max(p.seqs)
        got = set(p.seqs)
        should = {s for s in union[p.room] if lo <= s <= hi}
        lost_by_period.append(len(should - got))
        dups += p.dups
    return {
        "periods": len(healthy),
        "messages": sum(len(p.seqs) for p in healthy),
        "lost": sum(lost_by_period),
        "periods_with_loss": sum(1 for n in lost_by_period if n),
        "dups": dups,
        "union": {room: len(s) for room, s in union.items()},
        "union_sets": union,
    }
