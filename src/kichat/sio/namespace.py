"""Namespaces, sockets and rooms: what the application handles (see :mod:`kichat.sio.server`
for the whole API), and the broadcast's hot loop (:meth:`Namespace.emit`)."""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, Final

import orjson

from kichat.http import Request
from kichat.http import websocket as ws
from kichat.sio import engineio, parser
from kichat.sio.connection import FORCED_CLOSE, TRANSPORT_CLOSE, Connection
from kichat.sio.errors import ConnectRefused, ParseError
from kichat.sio.recovery import RecoveryLog

if TYPE_CHECKING:
    from kichat.sio.server import Server

log = logging.getLogger("kichat.sio")

CLIENT_DISCONNECT: Final = "client namespace disconnect"
SERVER_DISCONNECT: Final = "server namespace disconnect"
EVENT_OVERFLOW: Final = "too many pending events"
_OFFSET: Final = re.compile("[0-9]{1,18}")  # what we send; anything else is not ours
SESSION_MOVED: Final = "session moved"  # restored on another node: not a disconnect of the client
# Broadcasts held for one socket while a session store restores it (a restore takes a few round
# trips to the store; past this many, the restore fails and the client starts afresh).
_RESTORE_BUFFER: Final = 10_000

ConnectHandler = Callable[["Socket", dict[str, Any]], Awaitable[None] | None]
DisconnectHandler = Callable[["Socket", str], Awaitable[None] | None]
TransportHandler = Callable[["Socket"], None]
EventHandler = Callable[["Socket", list[Any], "Ack | None"], Awaitable[None] | None]


def new_id(length: int = 20) -> str:
    """A random id of ``length`` URL-safe characters (20, like the reference server's ids)."""
    return secrets.token_urlsafe(length * 3 // 4)[:length]


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
        "_inbox_bytes",
        "_pending",
        "_restoring",
        "auth",
        "base_offset",
        "client",
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
        self.sid = new_id()
        self.offsets = offsets
        self.pid: str | None = new_id() if offsets else None
        self.auth = auth
        self.handshake: Request = conn.request
        self.client = conn.client  # whose budgets a detached socket counts against
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
        self._inbox: deque[tuple[Callable[..., Any], tuple[Any, ...], int]] | None = None
        self._inbox_bytes = 0  # what the client sent for the events in the inbox
        self._busy = False
        self._pending: list[bytes] | None = []  # sent before the CONNECT reply went out
        # While a session store restores this socket: broadcasts that reached its rooms, with
        # their positions, to send after the missed packets (None otherwise).
        self._restoring: list[tuple[int, bytes]] | None = None

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

    def _submit(self, fn: Callable[..., Any], *args: Any, size: int = 0) -> None:
        """Run ``fn(*args)`` now, or after the handler still running; ``size`` is what the
        client sent for it. Waiting events are bounded in number and in bytes (one packet's
        maxPayload), so a client cannot pile up memory behind a slow handler."""
        if self._busy:
            server = self.nsp.server
            inbox = self._inbox
            if inbox is None:
                inbox = self._inbox = deque()
            if (
                len(inbox) >= server.max_pending_events
                or self._inbox_bytes + size > server.max_payload
            ):
                conn = self.conn
                log.info("closing %s (%s): %s", self.sid, self.peer, EVENT_OVERFLOW)
                if conn is not None:
                    conn.close(FORCED_CLOSE)
                return
            inbox.append((fn, args, size))
            self._inbox_bytes += size
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
            fn, args, size = inbox.popleft()
            self._inbox_bytes -= size
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
        self._detach_handler: TransportHandler | None = None
        self._restore_handler: TransportHandler | None = None
        self._handlers: dict[str, EventHandler] = {}

    # -- registration --------------------------------------------------------------------------

    def on_connect(self, fn: ConnectHandler) -> ConnectHandler:
        self._connect_handler = fn
        return fn

    def on_disconnect(self, fn: DisconnectHandler) -> DisconnectHandler:
        self._disconnect_handler = fn
        return fn

    def on_detach(self, fn: TransportHandler) -> TransportHandler:
        """``fn(sock)`` when a socket loses its transport and waits to be recovered."""
        self._detach_handler = fn
        return fn

    def on_restore(self, fn: TransportHandler) -> TransportHandler:
        """``fn(sock)`` when a detached socket is about to be recovered, ``sock.handshake``
        already the new connection's request; raising ConnectRefused refuses the recovery (the
        socket then ends and the client receives CONNECT_ERROR)."""
        self._restore_handler = fn
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

    def room_kinds(self, room: str) -> tuple[bool, bool]:
        """Whether ``room`` has members that receive offsets, and members that do not."""
        members = self.rooms.get(room)
        if members is None:
            return False, False
        return bool(members.offsets), bool(members.plain)

    def deliver(self, room: str, frame: bytes | None, plain: bytes | None, position: int) -> int:
        """Queue pre-built frames to ``room``'s members: ``frame`` (its offset already in it) to
        those that receive offsets, ``plain`` to the others. ``position`` orders it for sockets
        being restored by a session store (see :class:`kichat.sio.SessionStore`)."""
        members = self.rooms.get(room)
        if members is None:
            return 0
        server = self.server
        server.stats.broadcasts += 1
        sent = 0
        if frame is not None and members.offsets:
            sent += self._deliver(members.offsets, frame, position)
        if plain is not None and members.plain:
            sent += self._deliver(members.plain, plain)
        server.stats.deliveries += sent
        return sent

    def _deliver(self, members: Iterable[Socket], frame: bytes, position: int = 0) -> int:
        # The hot loop: no encoding, no allocation per recipient beyond a list slot.
        dirty = self.server._dirty
        sent = 0
        for sock in members:
            conn = sock.conn
            if conn is None:
                restoring = sock._restoring
                if restoring is not None and len(restoring) < _RESTORE_BUFFER:
                    restoring.append((position, frame))
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
            if server.store is not None:
                conn.holding[self.name] = []
                server.track(asyncio.ensure_future(self._restore_from(conn, pid, offset, auth)))
                return
            old = server.detached.get(pid)
            if old is not None and old.nsp is self and self._restore(old, conn, offset):
                return
        self._fresh(conn, auth)

    async def _restore_from(
        self, conn: Connection, pid: str, offset: object, auth: dict[str, Any]
    ) -> None:
        """Restore through the session store; packets of this namespace wait meanwhile."""
        store = self.server.store
        assert store is not None
        restored: Socket | None = None
        refused = False
        try:
            restored = await store.restore(self, conn, pid, offset)
        except ConnectRefused as exc:
            refused = True
            if not conn.closed:
                conn.send(self._refusal(exc))
        except Exception:
            self.server.stats.handler_errors += 1
            log.exception("restoring a session failed")
        held = conn.holding.pop(self.name, [])
        if conn.closed:
            if restored is not None:
                restored.nsp._detach(restored, TRANSPORT_CLOSE, time.monotonic())
            return
        if restored is None:
            self.server.stats.recovery_failed += 1
            if refused:
                return
            self._fresh(conn, auth)
        for packet in held:
            if conn.closed:
                break
            self.server.dispatch(conn, packet)

    def _fresh(self, conn: Connection, auth: dict[str, Any]) -> None:
        server = self.server
        offsets = server.recovery and auth.get("recovery") is not False
        sock = Socket(self, conn, auth, offsets)
        conn.sockets[self.name] = sock
        sock._submit(self._run_connect, sock, conn)

    def _restore(self, sock: Socket, conn: Connection, offset: object) -> bool:
        """Reattach a detached socket; False if its missed packets are no longer all kept."""
        server = self.server
        after = sock.base_offset
        if isinstance(offset, str) and _OFFSET.fullmatch(offset):
            after = int(offset)
        rooms = dict(sock.rooms)
        rooms[""] = sock.base_offset  # namespace-wide broadcasts
        missed = self.log.missed(rooms, after)
        server.undetach(sock)
        if missed is None:
            server.stats.recovery_failed += 1
            self._finalize(sock, sock.disconnect_reason or TRANSPORT_CLOSE)
            return False
        sock.handshake = conn.request
        sock.client = conn.client
        if self._restore_handler is not None:
            try:
                self._restore_handler(sock)
            except ConnectRefused as exc:
                server.stats.recovery_failed += 1
                self._finalize(sock, sock.disconnect_reason or TRANSPORT_CLOSE)
                conn.send(self._refusal(exc))
                return True
        server.stats.recovered += 1
        sock.recovered = True
        sock.detached_at = None
        conn.sockets[self.name] = sock
        self.sockets[sock.sid] = sock
        sock.conn = conn
        server.joined(conn)
        conn.send(self._connect_reply(sock))
        for frame in missed:
            conn.send(frame)
        log.debug("recovered socket %s with %d missed packets", sock.sid, len(missed))
        return True

    # -- restoring through a session store ---------------------------------------------------

    def revive(self, conn: Connection, pid: str, sid: str) -> Socket:
        """The socket of session ``pid`` to restore on ``conn``: the one detached here, or a new
        one (with the session's ``sid``) for the store to put back into its rooms. Broadcasts to
        its rooms are held for it from now on, until :meth:`attach` or :meth:`abandon`."""
        server = self.server
        sock = server.detached.get(pid)
        if sock is not None and sock.nsp is self:
            server.undetach(sock)
        else:
            sock = Socket(self, conn, {}, offsets=True)
            sock.sid = sid
            sock.pid = pid
            sock._pending = None
        sock._restoring = []
        return sock

    def attach(self, sock: Socket, conn: Connection, frames: Iterable[bytes], upto: int) -> bool:
        """Finish a restore: the CONNECT reply, the missed ``frames`` (positions up to ``upto``),
        then the broadcasts held meanwhile that came after ``upto``. False if more broadcasts
        arrived meanwhile than could be held (the caller abandons the restore then). The
        restore handler may refuse (ConnectRefused, raised after the socket was ended)."""
        held = sock._restoring or []
        if len(held) >= _RESTORE_BUFFER:
            return False
        sock.handshake = conn.request
        sock.client = conn.client
        if self._restore_handler is not None:
            try:
                self._restore_handler(sock)
            except ConnectRefused:
                self.abandon(sock, sock.disconnect_reason or TRANSPORT_CLOSE)
                raise
        sock._restoring = None
        sock.connected = True
        sock.recovered = True
        sock.detached_at = None
        sock.conn = conn
        conn.sockets[self.name] = sock
        self.sockets[sock.sid] = sock
        self.server.joined(conn)
        conn.send(self._connect_reply(sock))
        for frame in frames:
            conn.send(frame)
        for position, frame in held:
            if position > upto:
                conn.send(frame)
        self.server.stats.recovered += 1
        return True

    def abandon(self, sock: Socket, reason: str) -> None:
        """A restore that failed: the socket is gone for good."""
        sock._restoring = None
        self._finalize(sock, reason)

    def evict(self, pid: str) -> None:
        """Session ``pid`` was restored elsewhere: drop what is left of it here, quietly."""
        sock = self.server.detached.get(pid)
        if sock is None:
            sock = next((s for s in self.sockets.values() if s.pid == pid), None)
        if sock is None or sock.nsp is not self:
            return
        conn = sock.conn
        self._finalize(sock, SESSION_MOVED)
        if conn is not None and not conn.sockets:
            conn.close(FORCED_CLOSE)

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
        self.server.joined(conn)
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
        conn.send(self._refusal(exc))

    def _refusal(self, exc: ConnectRefused) -> bytes:
        payload: dict[str, Any] = {"message": exc.message}
        if exc.data is not None:
            payload["data"] = exc.data
        return engineio.message_frame(b"4" + self._prefix + parser.dumps(payload))

    def _detach(self, sock: Socket, reason: str, now: float) -> None:
        """The transport is gone but the client may come back: keep rooms, stop sending."""
        sock.conn = None
        sock.detached_at = now
        sock.disconnect_reason = reason
        self.sockets.pop(sock.sid, None)
        if self._detach_handler is not None:
            try:
                self._detach_handler(sock)
            except Exception:
                self.server.stats.handler_errors += 1
                log.exception("detach handler failed for socket %s", sock.sid)
        self.server.detach(sock)
        if self.server.store is not None:
            self.server.store.on_detached(sock)

    def _finalize(self, sock: Socket, reason: str) -> None:
        """The socket is gone for good: leave rooms, tell the application once."""
        was_connected = sock.connected
        sock.connected = False
        conn = sock.conn
        if conn is not None:
            conn.sockets.pop(self.name, None)
        sock.conn = None
        sock._inbox = None
        sock._inbox_bytes = 0
        self.sockets.pop(sock.sid, None)
        self.server.undetach(sock)
        if conn is not None:
            self.server.left(conn)
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
            sock._submit(handler, sock, args[1:], ack, size=packet.size)
        elif packet.type == parser.ACK:
            callback = sock._acks.pop(packet.id, None) if packet.id is not None else None
            if callback is not None:
                sock._submit(callback, *packet.data, size=packet.size)
        elif packet.type == parser.DISCONNECT:
            self._finalize(sock, CLIENT_DISCONNECT)
        else:
            raise ParseError(f"unexpected packet type {packet.type} from client")
