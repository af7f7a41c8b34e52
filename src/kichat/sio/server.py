"""A Socket.IO v4 server (Socket.IO protocol 5 over Engine.IO 4) built for fan-out.

The application-facing API, in full::

    sio = Server(ping_interval=25.0, ...)          # then mount ``sio.handle`` at ``/socket.io/``
    nsp = sio.of("/")                              # namespaces; "/" always exists

    @nsp.on_connect                                # may be async; raise ConnectRefused to refuse
    def connect(sock: Socket, auth: dict) -> None: ...

    @nsp.on_disconnect                             # once per socket, when it is gone for good
    def disconnect(sock: Socket, reason: str) -> None: ...

    @nsp.on("subscribe")                           # may be async; ``ack`` is None unless asked
    async def subscribe(sock: Socket, args: list, ack: Ack | None) -> None: ...

    sock.join(room); sock.leave(room); sock.emit(event, *args, callback=None); sock.disconnect()
    nsp.emit(event, *args, to=room)                # broadcast, encoded once

Design points:

* **Encode once.** A broadcast is serialised once (JSON, Socket.IO packet, Engine.IO prefix,
  WebSocket frame); the same ``bytes`` object is appended to every recipient's outbound queue.
* **Coalesced, chunked writes.** Queues are written by one flusher, scheduled once per loop
  iteration, in chunks of ``flush_batch`` connections so heartbeats, handshakes and upstream
  reads run between chunks of a large broadcast. Frames that pile up for a connection while it
  waits its turn leave in one ``write``: under load, batching grows by itself.
* **Bounded buffers.** See :mod:`kichat.sio.connection`: a client that cannot keep up is cut
  off, never allowed to grow memory or slow anyone else.
* **Connection state recovery** (on by default): see :mod:`kichat.sio.recovery`. A socket that
  loses its transport stays in its rooms for ``recovery_window`` seconds, so its rooms keep
  counting as occupied; ``on_disconnect`` fires only when that window closes. A client may opt
  out with ``auth: {"recovery": false}``: it then gets no ``pid`` and no offsets, which suits
  clients (python-socketio's) that pass every argument to handlers and do not recover anyway.
* Event handlers of one socket run one at a time, in arrival order, even when they are async.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import secrets
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from kichat.http import Request, Response, WebSocket, WebSocketUpgrade
from kichat.http import websocket as ws
from kichat.sio import engineio, parser
from kichat.sio.connection import (
    CONNECT_TIMEOUT,
    FORCED_CLOSE,
    POLLING,
    RECOVERABLE,
    SERVER_SHUTDOWN,
    TRANSPORT_CLOSE,
    TRANSPORT_ERROR,
    WEBSOCKET,
    Connection,
)
from kichat.sio.errors import ConnectRefused, ParseError
from kichat.sio.recovery import RecoveryLog

log = logging.getLogger("kichat.sio")

CLIENT_DISCONNECT: Final = "client namespace disconnect"
SERVER_DISCONNECT: Final = "server namespace disconnect"
EVENT_OVERFLOW: Final = "too many pending events"

ConnectHandler = Callable[["Socket", dict[str, Any]], Awaitable[None] | None]
DisconnectHandler = Callable[["Socket", str], Awaitable[None] | None]
EventHandler = Callable[["Socket", list[Any], "Ack | None"], Awaitable[None] | None]
AllowRequest = Callable[[Request], Awaitable[str | None]]

_INVALID_NAMESPACE: Final = b'{"message":"Invalid namespace"}'


def _new_id() -> str:
    return secrets.token_urlsafe(15)  # 20 characters, like the reference server's ids


@dataclass
class Stats:
    """Counters for metrics; gauges are computed by :meth:`Server.snapshot`."""

    handshakes: int = 0
    upgrades: int = 0
    broadcasts: int = 0
    deliveries: int = 0
    writes: int = 0  # WebSocket writes; deliveries / writes shows how much coalescing happened
    direct_packets: int = 0
    slow_clients: int = 0
    ping_timeouts: int = 0
    parse_errors: int = 0
    connect_timeouts: int = 0
    recovered: int = 0
    recovery_failed: int = 0
    handler_errors: int = 0
    disconnects: Counter[str] = field(default_factory=Counter)


class Ack:
    """Acknowledges one client event; calling it more than once does nothing."""

    __slots__ = ("_id", "_sent", "_sock")

    def __init__(self, sock: Socket, ack_id: int) -> None:
        self._sock = sock
        self._id = ack_id
        self._sent = False

    def __call__(self, *args: Any) -> None:
        if self._sent:
            return
        self._sent = True
        self._sock._send_packet(parser.ACK, list(args), self._id)


class Room:
    """Members of one room: sockets that receive offsets, and those that do not."""

    __slots__ = ("name", "offsets", "plain")

    def __init__(self, name: str) -> None:
        self.name = name
        self.offsets: dict[Socket, None] = {}
        self.plain: dict[Socket, None] = {}

    def __len__(self) -> int:
        return len(self.offsets) + len(self.plain)


class Socket:
    """A client's connection to one namespace."""

    __slots__ = (
        "_ack_id",
        "_acks",
        "_busy",
        "_inbox",
        "_pending",
        "auth",
        "base_offset",
        "conn",
        "connected",
        "data",
        "detached_at",
        "disconnect_reason",
        "handshake",
        "nsp",
        "offsets",
        "pid",
        "recovered",
        "rooms",
        "sid",
    )

    def __init__(self, nsp: Namespace, conn: Connection, auth: dict[str, Any], offsets: bool):
        self.nsp = nsp
        self.sid = _new_id()
        self.offsets = offsets
        self.pid: str | None = _new_id() if offsets else None
        self.auth = auth
        self.handshake: Request = conn.request
        self.conn: Connection | None = None  # set once connected: broadcasts skip it until then
        self.connected = False
        self.recovered = False
        self.data: dict[str, Any] = {}
        self.rooms: dict[str, int] = {}  # room -> offset at the time of joining
        self.base_offset = nsp.log.last_offset
        self.detached_at: float | None = None
        self.disconnect_reason = ""
        self._acks: dict[int, Callable[..., Any]] = {}
        self._ack_id = 0
        self._inbox: deque[tuple[Callable[..., Any], tuple[Any, ...]]] | None = None
        self._busy = False
        self._pending: list[bytes] | None = []  # sent before the CONNECT reply went out

    def __repr__(self) -> str:
        return f"<Socket {self.sid} nsp={self.nsp.name} rooms={len(self.rooms)}>"

    @property
    def peer(self) -> str:
        return self.handshake.peer

    # -- rooms ---------------------------------------------------------------------------------

    def join(self, room: str) -> None:
        if room in self.rooms:
            return
        self.nsp._join(self, room)

    def leave(self, room: str) -> None:
        if room in self.rooms:
            self.nsp._leave(self, room)

    # -- sending -------------------------------------------------------------------------------

    def emit(self, event: str, *args: Any, callback: Callable[..., Any] | None = None) -> None:
        """Send one event to this socket. With recovery on, socket.io-client treats a trailing
        string argument as an offset: end direct events with an object, not a string."""
        ack_id = None
        if callback is not None:
            self._ack_id += 1
            ack_id = self._ack_id
            self._acks[ack_id] = callback
        self._send_packet(parser.EVENT, [event, *args], ack_id)

    def _send_packet(
        self, ptype: int, data: Any = parser.ABSENT, ack_id: int | None = None
    ) -> None:
        text, buffers = parser.encode(ptype, self.nsp.name, data, ack_id)
        frames = engineio.message_frame(text)
        if buffers:
            frames += b"".join(ws.binary_frame(b) for b in buffers)
        self._send(frames)

    def _send(self, frames: bytes) -> None:
        if self.conn is not None:
            self.nsp.server.stats.direct_packets += 1
            self.conn.send(frames)
        elif self._pending is not None:
            self._pending.append(frames)

    def disconnect(self) -> None:
        """Disconnect this socket from its namespace (the client will not reconnect)."""
        if self.connected:
            self._send_packet(parser.DISCONNECT)
            self.nsp._finalize(self, SERVER_DISCONNECT)

    # -- handler scheduling: one at a time, in order -------------------------------------------

    def _submit(self, fn: Callable[..., Any], *args: Any) -> None:
        if self._busy:
            inbox = self._inbox
            if inbox is None:
                inbox = self._inbox = deque()
            if len(inbox) >= self.nsp.server.max_pending_events:
                conn = self.conn
                log.info("closing %s (%s): %s", self.sid, self.peer, EVENT_OVERFLOW)
                if conn is not None:
                    conn.close(FORCED_CLOSE)
                return
            inbox.append((fn, args))
            return
        self._execute(fn, args)

    def _execute(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        try:
            result = fn(*args)
        except Exception:
            self.nsp.server.stats.handler_errors += 1
            log.exception("handler %s failed for socket %s", getattr(fn, "__name__", fn), self.sid)
            return
        if inspect.isawaitable(result):
            self._busy = True
            task = asyncio.ensure_future(result)
            self.nsp.server.track(task)
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Future[Any]) -> None:
        self._busy = False
        if not task.cancelled() and task.exception() is not None:
            self.nsp.server.stats.handler_errors += 1
            log.error("handler failed for socket %s", self.sid, exc_info=task.exception())
        inbox = self._inbox
        while inbox and not self._busy:
            fn, args = inbox.popleft()
            self._execute(fn, args)


class Namespace:
    def __init__(self, server: Server, name: str) -> None:
        self.server = server
        self.name = name
        self.sockets: dict[str, Socket] = {}  # connected and attached to a transport
        self.rooms: dict[str, Room] = {}
        self.log = RecoveryLog(server.recovery_window, server.recovery_buffer_bytes)
        self._prefix = parser.nsp_prefix(name)
        self._connect_handler: ConnectHandler | None = None
        self._disconnect_handler: DisconnectHandler | None = None
        self._handlers: dict[str, EventHandler] = {}

    # -- registration --------------------------------------------------------------------------

    def on_connect(self, fn: ConnectHandler) -> ConnectHandler:
        self._connect_handler = fn
        return fn

    def on_disconnect(self, fn: DisconnectHandler) -> DisconnectHandler:
        self._disconnect_handler = fn
        return fn

    def on(self, event: str) -> Callable[[EventHandler], EventHandler]:
        def register(fn: EventHandler) -> EventHandler:
            self._handlers[event] = fn
            return fn

        return register

    def room_size(self, room: str) -> int:
        """Members of ``room``, counting sockets waiting to be recovered."""
        members = self.rooms.get(room)
        return len(members) if members is not None else 0

    # -- broadcast -----------------------------------------------------------------------------

    def emit(self, event: str, *args: Any, to: str | None = None) -> int:
        """Send an event to every socket in room ``to`` (or in the namespace); returns how many
        connections it was queued for. The packet is encoded once for all of them."""
        if to is None:
            offsets: Iterable[Socket] = [s for s in self.sockets.values() if s.offsets]
            plain: Iterable[Socket] = [s for s in self.sockets.values() if not s.offsets]
            log_key = ""
        else:
            room = self.rooms.get(to)
            if room is None:
                return 0
            offsets, plain, log_key = room.offsets, room.plain, to
        server = self.server
        server.stats.broadcasts += 1
        text, buffers = parser.encode(parser.EVENT, self.name, [event, *args])
        tail = b"".join(ws.binary_frame(b) for b in buffers) if buffers else b""
        sent = 0
        if offsets:
            offset = self.log.next_offset()
            # The offset is the packet's last argument: spliced into the JSON array, one copy.
            frame = engineio.message_frame_of(memoryview(text)[:-1], b',"%d"]' % offset)
            if tail:
                frame += tail
            if server.recovery:
                self.log.append(log_key, offset, frame)
            sent += self._deliver(offsets, frame)
        if plain:
            sent += self._deliver(plain, engineio.message_frame(text) + tail)
        server.stats.deliveries += sent
        return sent

    def _deliver(self, members: Iterable[Socket], frame: bytes) -> int:
        # The hot loop: no encoding, no allocation per recipient beyond a list slot.
        dirty = self.server._dirty
        sent = 0
        for sock in members:
            conn = sock.conn
            if conn is None:
                continue
            if not conn.dirty:
                conn.dirty = True
                dirty.append(conn)
            conn.queue.append(frame)
            sent += 1
        if sent:
            self.server._schedule_flush()
        return sent

    # -- rooms ---------------------------------------------------------------------------------

    def _join(self, sock: Socket, name: str) -> None:
        room = self.rooms.get(name)
        if room is None:
            room = self.rooms[name] = Room(name)
        (room.offsets if sock.offsets else room.plain)[sock] = None
        sock.rooms[name] = self.log.last_offset

    def _leave(self, sock: Socket, name: str) -> None:
        del sock.rooms[name]
        room = self.rooms.get(name)
        if room is None:
            return
        room.offsets.pop(sock, None)
        room.plain.pop(sock, None)
        if not room:
            del self.rooms[name]
            self.log.drop_room(name)

    # -- connection lifecycle ------------------------------------------------------------------

    def _connect(self, conn: Connection, auth: dict[str, Any]) -> None:
        pid = auth.pop("pid", None)
        offset = auth.pop("offset", None)
        server = self.server
        if server.recovery and isinstance(pid, str):
            old = server.detached.get(pid)
            if old is not None and old.nsp is self and self._restore(old, conn, offset):
                return
        offsets = server.recovery and auth.get("recovery") is not False
        sock = Socket(self, conn, auth, offsets)
        conn.sockets[self.name] = sock
        sock._submit(self._run_connect, sock, conn)

    def _restore(self, sock: Socket, conn: Connection, offset: object) -> bool:
        """Reattach a detached socket; False if its missed packets are no longer all kept."""
        server = self.server
        after = sock.base_offset
        if isinstance(offset, str) and offset.isdigit():
            after = int(offset)
        rooms = dict(sock.rooms)
        rooms[""] = sock.base_offset  # namespace-wide broadcasts
        missed = self.log.missed(rooms, after)
        assert sock.pid is not None
        del server.detached[sock.pid]
        if missed is None:
            server.stats.recovery_failed += 1
            self._finalize(sock, sock.disconnect_reason or TRANSPORT_CLOSE)
            return False
        server.stats.recovered += 1
        sock.recovered = True
        sock.detached_at = None
        sock.handshake = conn.request
        conn.sockets[self.name] = sock
        self.sockets[sock.sid] = sock
        sock.conn = conn
        conn.send(self._connect_reply(sock))
        for frame in missed:
            conn.send(frame)
        log.debug("recovered socket %s with %d missed packets", sock.sid, len(missed))
        return True

    def _run_connect(self, sock: Socket, conn: Connection) -> Awaitable[None] | None:
        handler = self._connect_handler
        if handler is None:
            self._accept(sock, conn)
            return None
        try:
            result = handler(sock, sock.auth)
        except ConnectRefused as exc:
            self._refuse(sock, conn, exc)
            return None
        if inspect.isawaitable(result):
            return self._await_connect(sock, conn, result)
        self._accept(sock, conn)
        return None

    async def _await_connect(
        self, sock: Socket, conn: Connection, pending: Awaitable[None]
    ) -> None:
        try:
            await pending
        except ConnectRefused as exc:
            self._refuse(sock, conn, exc)
            return
        self._accept(sock, conn)

    def _accept(self, sock: Socket, conn: Connection) -> None:
        if conn.closed:
            # The client left while the connect handler ran: undo what the handler did.
            for room in list(sock.rooms):
                self._leave(sock, room)
            return
        sock.connected = True
        sock.conn = conn
        self.sockets[sock.sid] = sock
        conn.send(self._connect_reply(sock))
        pending, sock._pending = sock._pending, None
        for frames in pending or ():
            conn.send(frames)

    def _connect_reply(self, sock: Socket) -> bytes:
        body: dict[str, str] = {"sid": sock.sid}
        if sock.pid is not None:
            body["pid"] = sock.pid
        return engineio.message_frame(b"0" + self._prefix + orjson.dumps(body))

    def _refuse(self, sock: Socket, conn: Connection, exc: ConnectRefused) -> None:
        conn.sockets.pop(self.name, None)
        for room in list(sock.rooms):
            self._leave(sock, room)
        payload: dict[str, Any] = {"message": exc.message}
        if exc.data is not None:
            payload["data"] = exc.data
        conn.send(engineio.message_frame(b"4" + self._prefix + parser.dumps(payload)))

    def _detach(self, sock: Socket, reason: str, now: float) -> None:
        """The transport is gone but the client may come back: keep rooms, stop sending."""
        sock.conn = None
        sock.detached_at = now
        sock.disconnect_reason = reason
        self.sockets.pop(sock.sid, None)
        assert sock.pid is not None
        self.server.detached[sock.pid] = sock

    def _finalize(self, sock: Socket, reason: str) -> None:
        """The socket is gone for good: leave rooms, tell the application once."""
        was_connected = sock.connected
        sock.connected = False
        if sock.conn is not None:
            sock.conn.sockets.pop(self.name, None)
        sock.conn = None
        sock._inbox = None
        self.sockets.pop(sock.sid, None)
        if sock.pid is not None:
            self.server.detached.pop(sock.pid, None)
        for room in list(sock.rooms):
            self._leave(sock, room)
        self.server.stats.disconnects[reason] += 1
        handler = self._disconnect_handler
        if was_connected and handler is not None:
            try:
                result = handler(sock, reason)
            except Exception:
                self.server.stats.handler_errors += 1
                log.exception("disconnect handler failed for socket %s", sock.sid)
                return
            if inspect.isawaitable(result):
                self.server.track(asyncio.ensure_future(result))

    # -- packets from a connected socket -------------------------------------------------------

    def _packet(self, sock: Socket, packet: parser.Packet) -> None:
        if packet.type == parser.EVENT:
            args: list[Any] = packet.data
            handler = self._handlers.get(args[0]) if isinstance(args[0], str) else None
            if handler is None:
                if packet.id is not None:
                    Ack(sock, packet.id)()  # an unknown event still gets its (empty) ack
                return
            ack = Ack(sock, packet.id) if packet.id is not None else None
            sock._submit(handler, sock, args[1:], ack)
        elif packet.type == parser.ACK:
            callback = sock._acks.pop(packet.id, None) if packet.id is not None else None
            if callback is not None:
                sock._submit(callback, *packet.data)
        elif packet.type == parser.DISCONNECT:
            self._finalize(sock, CLIENT_DISCONNECT)
        else:
            raise ParseError(f"unexpected packet type {packet.type} from client")


class _Probe:
    """Handles a WebSocket that is probing to take over a long-polling session."""

    __slots__ = ("conn", "sock")

    def __init__(self, conn: Connection, sock: WebSocket) -> None:
        self.conn = conn
        self.sock = sock
        conn.probe = sock

    def on_message(self, data: str | bytes) -> None:
        conn = self.conn
        if conn.closed:
            self.sock.close()
        elif data == "2probe":
            self.sock.write(engineio.PROBE_REPLY_FRAME)
            # The client now pauses polling and waits for its pending GET to return: answer
            # it (and any GET still on its way) at once.
            conn.upgrading = True
            if conn.poll is not None:
                conn.send(engineio.NOOP_FRAME)
        elif data == "5":
            conn.complete_upgrade(self.sock)
        else:
            self.sock.close(ws.CLOSE_PROTOCOL_ERROR, "unexpected packet during upgrade")

    def on_close(self, code: int, reason: str) -> None:
        if self.conn.probe is self.sock:
            self.conn.probe = None  # upgrade abandoned; the session stays on long-polling
            self.conn.upgrading = False

    def on_pause_writing(self) -> None:
        pass

    def on_resume_writing(self) -> None:
        pass


class _Refused:
    """Closes a WebSocket that may not join an existing session."""

    __slots__ = ()

    def __init__(self, sock: WebSocket) -> None:
        sock.close(ws.CLOSE_POLICY_VIOLATION, "session already upgraded")

    def on_message(self, data: str | bytes) -> None:
        pass

    def on_close(self, code: int, reason: str) -> None:
        pass

    def on_pause_writing(self) -> None:
        pass

    def on_resume_writing(self) -> None:
        pass


class Server:
    def __init__(
        self,
        *,
        ping_interval: float = 25.0,
        ping_timeout: float = 20.0,
        max_payload: int = 1_000_000,
        connect_timeout: float = 45.0,
        cors_origins: Iterable[str] = ("*",),
        recovery: bool = True,
        recovery_window: float = 120.0,
        recovery_buffer_bytes: int = 64 * 1024 * 1024,
        outbound_buffer_limit: int = 4 * 1024 * 1024,
        flush_batch: int = 256,
        coalesce_writes: bool = True,
        packet_spacing: float = 0.0,
        flush_interval: float = 0.0,
        max_pending_events: int = 64,
        allow_request: AllowRequest | None = None,
    ) -> None:
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.max_payload = max_payload
        self.connect_timeout = connect_timeout
        self.cors_origins = frozenset(cors_origins)
        self.recovery = recovery
        self.recovery_window = recovery_window
        self.recovery_buffer_bytes = recovery_buffer_bytes
        self.outbound_buffer_limit = outbound_buffer_limit
        self.flush_batch = flush_batch
        # False: one packet per write, ``packet_spacing`` seconds apart. Only the conformance
        # fixture wants that (see kichat.sio.conformance); never use it in production.
        self.coalesce_writes = coalesce_writes
        self.packet_spacing = packet_spacing
        # Wait this long before flushing after the first queued packet, so that packets queued
        # meanwhile (other rooms' broadcasts) leave in the same burst of writes. 0: next loop turn.
        self.flush_interval = flush_interval
        self.max_pending_events = max_pending_events
        self.allow_request = allow_request
        self.stats = Stats()
        self.sessions: dict[str, Connection] = {}
        self.detached: dict[str, Socket] = {}
        self.namespaces: dict[str, Namespace] = {}
        self._dirty: list[Connection] = []
        self._flush_handle: asyncio.Handle | None = None
        self._tasks: set[asyncio.Future[Any]] = set()
        self._housekeeping: asyncio.Task[None] | None = None
        self._connect_timers: dict[Connection, asyncio.TimerHandle] = {}
        self.of("/")

    def of(self, name: str) -> Namespace:
        nsp = self.namespaces.get(name)
        if nsp is None:
            nsp = self.namespaces[name] = Namespace(self, name)
        return nsp

    def track(self, task: asyncio.Future[Any]) -> None:
        """Keep a reference to a background task until it ends."""
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        if self._housekeeping is None:
            self._housekeeping = asyncio.create_task(self._housekeep())

    async def close(self) -> None:
        """Close every connection (clients see a transport close and reconnect elsewhere) and
        end every socket, calling ``on_disconnect`` with ``server shutting down``."""
        if self._housekeeping is not None:
            self._housekeeping.cancel()
        for conn in list(self.sessions.values()):
            conn.close(SERVER_SHUTDOWN)
        for sock in list(self.detached.values()):
            sock.nsp._finalize(sock, SERVER_SHUTDOWN)
        self._flush()
        for task in list(self._tasks):
            task.cancel()

    async def _housekeep(self) -> None:
        period = max(0.05, min(1.0, self.recovery_window / 4))
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            horizon = now - self.recovery_window
            for sock in [s for s in self.detached.values() if (s.detached_at or now) < horizon]:
                sock.nsp._finalize(sock, sock.disconnect_reason)
            for nsp in self.namespaces.values():
                nsp.log.expire()

    # -- flushing ------------------------------------------------------------------------------

    def mark_dirty(self, conn: Connection) -> None:
        self._dirty.append(conn)
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if self._flush_handle is None:
            loop = asyncio.get_running_loop()
            if self.flush_interval > 0:
                self._flush_handle = loop.call_later(self.flush_interval, self._flush)
            else:
                self._flush_handle = loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        pending = self._dirty
        if len(pending) > self.flush_batch:
            batch = pending[: self.flush_batch]
            del pending[: self.flush_batch]
            # The rest after other callbacks had their turn (not after another interval).
            self._flush_handle = asyncio.get_running_loop().call_soon(self._flush)
        else:
            batch = pending
            self._dirty = []
        for conn in batch:
            conn.flush()

    # -- packets -------------------------------------------------------------------------------

    def dispatch(self, conn: Connection, packet: parser.Packet) -> None:
        if packet.type == parser.CONNECT:
            timer = self._connect_timers.pop(conn, None)
            if timer is not None:
                timer.cancel()
            nsp = self.namespaces.get(packet.nsp)
            if nsp is None:
                prefix = parser.nsp_prefix(packet.nsp)
                conn.send(engineio.message_frame(b"4" + prefix + _INVALID_NAMESPACE))
            elif packet.nsp not in conn.sockets:
                auth = dict(packet.data) if isinstance(packet.data, dict) else {}
                nsp._connect(conn, auth)
            return
        sock = conn.sockets.get(packet.nsp)
        if sock is None:
            raise ParseError(f"packet for namespace {packet.nsp!r} before connecting to it")
        sock.nsp._packet(sock, packet)

    def connection_closed(self, conn: Connection, reason: str) -> None:
        """Called once by a connection as it closes: detach or end its sockets."""
        self.sessions.pop(conn.sid, None)
        timer = self._connect_timers.pop(conn, None)
        if timer is not None:
            timer.cancel()
        now = time.monotonic()
        recoverable = self.recovery and reason in RECOVERABLE
        for sock in list(conn.sockets.values()):
            if not sock.connected:
                continue  # its connect handler is still running and will see conn.closed
            if recoverable and sock.pid is not None:
                sock.nsp._detach(sock, reason, now)
            else:
                sock.nsp._finalize(sock, reason)
        conn.sockets.clear()
        if reason != TRANSPORT_CLOSE or conn.transport == POLLING:
            log.debug("connection %s closed: %s", conn.sid, reason)

    # -- HTTP ----------------------------------------------------------------------------------

    async def handle(self, request: Request) -> Response | WebSocketUpgrade:
        """Entry point for every request under the Socket.IO path."""
        origin = request.headers.get("origin")
        cors = self._cors_headers(origin)
        if request.method == "OPTIONS":
            return self._preflight(request, cors)
        query = request.query
        if query.get("EIO") != "4":
            return _eio_error(engineio.UNSUPPORTED_PROTOCOL_VERSION, cors)
        transport = query.get("transport")
        if transport not in (POLLING, WEBSOCKET):
            return _eio_error(engineio.UNKNOWN_TRANSPORT, cors)
        if origin is not None and cors is None:
            return _eio_error(engineio.FORBIDDEN, None, status=403, message="origin not allowed")
        sid = query.get("sid")
        if transport == WEBSOCKET:
            return await self._websocket(request, sid, cors)
        if sid is None:
            if request.method != "GET":
                return _eio_error(engineio.BAD_HANDSHAKE_METHOD, cors)
            refusal = await self._refusal(request)
            if refusal is not None:
                return _eio_error(engineio.FORBIDDEN, cors, status=403, message=refusal)
            conn = self._open(request, POLLING)
            body = self._open_packet(conn, ["websocket"])
            return Response(200, body, _text_headers(cors))
        conn_or_none = self.sessions.get(sid)
        if conn_or_none is None:
            return _eio_error(engineio.UNKNOWN_SID, cors)
        if conn_or_none.transport != POLLING:
            return _eio_error(engineio.BAD_REQUEST, cors)
        if request.method == "GET":
            return await self._poll(conn_or_none, cors)
        if request.method == "POST":
            return self._post(conn_or_none, request, cors)
        return _eio_error(engineio.BAD_REQUEST, cors)

    async def _websocket(
        self, request: Request, sid: str | None, cors: list[tuple[str, str]] | None
    ) -> Response | WebSocketUpgrade:
        if "websocket" not in request.headers.get("upgrade", "").lower():
            return _eio_error(engineio.BAD_REQUEST, cors)
        limits = {"max_message_size": self.max_payload, "write_limit": self.outbound_buffer_limit}
        if sid is None:
            refusal = await self._refusal(request)
            if refusal is not None:
                return _eio_error(engineio.FORBIDDEN, cors, status=403, message=refusal)
            return WebSocketUpgrade(lambda sock: self._open_websocket(sock, request), **limits)
        conn = self.sessions.get(sid)
        if conn is None:
            return _eio_error(engineio.UNKNOWN_SID, cors)
        if conn.transport != POLLING or conn.probe is not None:
            # Already upgraded, or an upgrade in progress: like the reference server, accept
            # the WebSocket and close it at once, so the client sees a clean close.
            return WebSocketUpgrade(_Refused, **limits)
        return WebSocketUpgrade(lambda sock: _Probe(conn, sock), **limits)

    async def _refusal(self, request: Request) -> str | None:
        if self.allow_request is None:
            return None
        return await self.allow_request(request)

    def _open(self, request: Request, transport: str) -> Connection:
        sid = _new_id()
        conn = Connection(self, sid, request, transport)
        self.sessions[sid] = conn
        self.stats.handshakes += 1
        conn.schedule_ping()
        loop = asyncio.get_running_loop()
        self._connect_timers[conn] = loop.call_later(
            self.connect_timeout, self._connect_timed_out, conn
        )
        return conn

    def _connect_timed_out(self, conn: Connection) -> None:
        self._connect_timers.pop(conn, None)
        if not conn.sockets and not conn.closed:
            self.stats.connect_timeouts += 1
            conn.close(CONNECT_TIMEOUT)

    def _open_packet(self, conn: Connection, upgrades: list[str]) -> bytes:
        return engineio.open_packet(
            conn.sid,
            upgrades,
            round(self.ping_interval * 1000),
            round(self.ping_timeout * 1000),
            self.max_payload,
        )

    def _open_websocket(self, sock: WebSocket, request: Request) -> Connection:
        conn = self._open(request, WEBSOCKET)
        conn.ws = sock
        sock.write(ws.text_frame(self._open_packet(conn, [])))
        return conn

    async def _poll(self, conn: Connection, cors: list[tuple[str, str]] | None) -> Response:
        if conn.poll is not None:
            # A second GET while one is pending breaks the ordering guarantee: end the session.
            conn.close(TRANSPORT_ERROR)
            return _eio_error(engineio.BAD_REQUEST, cors)
        if conn.upgrading:
            conn.queue.append(engineio.NOOP_FRAME)
        if not conn.queue:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            conn.poll = waiter
            try:
                await waiter
            except asyncio.CancelledError:
                # The client gave up on the request (navigation, network): the session is over.
                conn.poll = None
                conn.close(TRANSPORT_CLOSE)
                raise
            conn.poll = None
        return Response(200, conn.take_payload(), _text_headers(cors))

    def _post(
        self, conn: Connection, request: Request, cors: list[tuple[str, str]] | None
    ) -> Response:
        if len(request.body) > self.max_payload:
            conn.close(TRANSPORT_ERROR)
            return _eio_error(engineio.BAD_REQUEST, cors, status=413, message="payload too large")
        try:
            packets = engineio.decode_payload(request.body)
        except ParseError:
            self.stats.parse_errors += 1
            conn.close(TRANSPORT_ERROR)
            return _eio_error(engineio.BAD_REQUEST, cors)
        for packet in packets:
            conn.receive(packet)
            if conn.closed:
                break
        return Response(200, b"ok", _text_headers(cors))

    def _cors_headers(self, origin: str | None) -> list[tuple[str, str]] | None:
        """CORS response headers for ``origin``; None if that origin is not allowed."""
        if origin is None:
            return []
        if "*" in self.cors_origins or origin in self.cors_origins:
            return [
                ("Access-Control-Allow-Origin", origin),
                ("Access-Control-Allow-Credentials", "true"),
                ("Vary", "Origin"),
            ]
        return None

    def _preflight(self, request: Request, cors: list[tuple[str, str]] | None) -> Response:
        if cors is None:
            return _eio_error(engineio.FORBIDDEN, None, status=403, message="origin not allowed")
        requested = request.headers.get("access-control-request-headers")
        headers = [*cors, ("Access-Control-Allow-Methods", "GET, POST, OPTIONS")]
        if requested:
            headers.append(("Access-Control-Allow-Headers", requested))
        headers.append(("Access-Control-Max-Age", "86400"))
        return Response(204, b"", headers)

    # -- observability -------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        by_transport = Counter(c.transport for c in self.sessions.values())
        return {
            "connections": len(self.sessions),
            "connections_by_transport": dict(by_transport),
            "sockets": sum(len(n.sockets) for n in self.namespaces.values()),
            "detached_sockets": len(self.detached),
            "rooms": sum(len(n.rooms) for n in self.namespaces.values()),
            "recovery_log_bytes": sum(n.log.bytes for n in self.namespaces.values()),
        }


def _text_headers(cors: list[tuple[str, str]] | None) -> list[tuple[str, str]]:
    return [("Content-Type", "text/plain; charset=UTF-8"), *(cors or [])]


def _eio_error(
    error: tuple[int, str],
    cors: list[tuple[str, str]] | None,
    *,
    status: int = 400,
    message: str | None = None,
) -> Response:
    code, default = error
    return Response.json({"code": code, "message": message or default}, status, cors or [])
