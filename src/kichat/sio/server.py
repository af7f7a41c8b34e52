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
* **Admission at the handshake.** ``allow_request`` (the application's check, e.g. API keys)
  and per-client budgets (see :mod:`kichat.sio.admission`) decide before an Engine.IO session
  exists; a session that never joins a namespace ends after ``connect_timeout``.

This module holds the server (HTTP entry, Engine.IO sessions, the flusher, dispatch);
:mod:`kichat.sio.namespace` holds namespaces, sockets, rooms and the broadcast itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from kichat.http import Request, Response, WebSocket, WebSocketUpgrade
from kichat.http import websocket as ws
from kichat.sio import engineio, parser
from kichat.sio.admission import Budgets, ClientKey, Refusal, peer_address
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
from kichat.sio.errors import ParseError
from kichat.sio.namespace import Namespace, Socket, new_id
from kichat.sio.store import SessionStore

log = logging.getLogger("kichat.sio")

AllowRequest = Callable[[Request], Awaitable[Refusal | None]]

_INVALID_NAMESPACE: Final = b'{"message":"Invalid namespace"}'


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
    detached_evicted: int = 0  # detached sockets ended early: their client had too many
    refused_handshakes: Counter[str] = field(default_factory=Counter)  # by refusal code
    disconnects: Counter[str] = field(default_factory=Counter)


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
    """Closes a WebSocket that may not carry a session."""

    __slots__ = ()

    def __init__(self, sock: WebSocket, reason: str = "session already upgraded") -> None:
        sock.close(ws.CLOSE_POLICY_VIOLATION, reason)

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
        client_key: ClientKey = peer_address,
        pending_per_client: int = 10,
        max_pending: int = 10_000,
        detached_per_client: int = 10,
        store: SessionStore | None = None,
        sid_prefix: str = "",
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
        # Admission at the Engine.IO handshake (both transports): the application's check,
        # then the budgets of the client ``client_key`` names (see kichat.sio.admission).
        self.allow_request = allow_request
        self.client_key = client_key
        # Where sessions go while their client is away, and how they come back (another node
        # may restore them); None: in this process, with the namespace's own recovery log.
        self.store = store
        # Starts every Engine.IO session id: in a cluster, the node's id, so that a reverse
        # proxy (or the worker that accepted a connection) can route a poll to its session.
        self.sid_prefix = sid_prefix
        self.budgets = Budgets(
            pending_per_client=pending_per_client,
            max_pending=max_pending,
            detached_per_client=detached_per_client,
        )
        self.stats = Stats()
        self.sessions: dict[str, Connection] = {}
        self.detached: dict[str, Socket] = {}
        self.namespaces: dict[str, Namespace] = {}
        self._dirty: list[Connection] = []
        self._flush_handle: asyncio.Handle | None = None
        self._tasks: set[asyncio.Future[Any]] = set()
        self._housekeeping: asyncio.Task[None] | None = None
        self._connect_timers: dict[Connection, asyncio.TimerHandle] = {}
        # While closing: polling sessions whose next GET gets their last packets and the close.
        self.closing = False
        self._final_polls: dict[str, Connection] = {}
        self._final_polls_done = asyncio.Event()
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

    async def close(self, grace: float = 5.0) -> None:
        """Drain: refuse new sessions, flush what is queued to every client and close its
        transport (WebSocket: close 1001; long-polling: the pending or next GET gets the close
        packet), so that clients see a transport close and reconnect, here after a restart or
        to another instance. Every socket ends (``on_disconnect`` with ``server shutting
        down``): sessions are not recoverable after this. Returns once every polling client
        has had its last GET, or after ``grace`` seconds. (The HTTP server sees the
        WebSocket closing handshakes through.)"""
        self.closing = True
        if self._housekeeping is not None:
            self._housekeeping.cancel()
        for conn in list(self.sessions.values()):
            conn.close(SERVER_SHUTDOWN)
        for sock in list(self.detached.values()):
            sock.nsp._finalize(sock, SERVER_SHUTDOWN)
        self._flush()
        if self._final_polls:
            self._final_polls_done.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._final_polls_done.wait(), grace)
            self._final_polls.clear()
        for task in list(self._tasks):
            task.cancel()

    def hold_final_poll(self, conn: Connection) -> None:
        """Keep a polling session closed by :meth:`close` until its client has polled what
        was queued and then the close packet."""
        self._final_polls[conn.sid] = conn

    def _final_poll(self, sid: str, method: str, cors: list[tuple[str, str]] | None) -> Response:
        if method != "GET":
            return Response(200, b"ok", _text_headers(cors))  # a packet sent meanwhile: moot now
        conn = self._final_polls[sid]
        if not conn.queue:  # all delivered: now the close packet, and the session is gone
            del self._final_polls[sid]
            if not self._final_polls:
                self._final_polls_done.set()
            conn.queue.append(engineio.CLOSE_FRAME)
        return Response(200, conn.take_payload(), _text_headers(cors))

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
            nsp = self.namespaces.get(packet.nsp)
            if nsp is None:
                prefix = parser.nsp_prefix(packet.nsp)
                conn.send(engineio.message_frame(b"4" + prefix + _INVALID_NAMESPACE))
            elif packet.nsp not in conn.sockets:
                auth = dict(packet.data) if isinstance(packet.data, dict) else {}
                nsp._connect(conn, auth)
            return
        held = conn.holding.get(packet.nsp)
        if held is not None:
            if len(held) >= self.max_pending_events:
                raise ParseError("too many packets while the session is being restored")
            held.append(packet)
            return
        sock = conn.sockets.get(packet.nsp)
        if sock is None:
            raise ParseError(f"packet for namespace {packet.nsp[:40]!r} before connecting to it")
        sock.nsp._packet(sock, packet)

    # -- sessions: pending until a socket joins, and back when the last one leaves -----------

    def joined(self, conn: Connection) -> None:
        """A socket was accepted on ``conn``: it is no longer a pending session."""
        if conn.pending:
            conn.pending = False
            self.budgets.remove_pending(conn.client)
            timer = self._connect_timers.pop(conn, None)
            if timer is not None:
                timer.cancel()

    def left(self, conn: Connection) -> None:
        """The last socket of an open ``conn`` left its namespace: the session is pending
        again, bounded and timed like a new one (closed if its client has no room for it)."""
        if conn.closed or conn.sockets or conn.pending:
            return
        if self.budgets.check_pending(conn.client) is not None:
            conn.close(FORCED_CLOSE)
            return
        self._pend(conn)

    def _pend(self, conn: Connection) -> None:
        conn.pending = True
        self.budgets.add_pending(conn.client)
        self._connect_timers[conn] = asyncio.get_running_loop().call_later(
            self.connect_timeout, self._connect_timed_out, conn
        )

    def detach(self, sock: Socket) -> None:
        """Keep ``sock`` (its transport dropped) for recovery, within its client's budget:
        past it, the client's oldest detached socket ends."""
        assert sock.pid is not None
        self.detached[sock.pid] = sock
        for old in self.budgets.add_detached(sock.client, sock):
            self.stats.detached_evicted += 1
            old.nsp._finalize(old, old.disconnect_reason)

    def undetach(self, sock: Socket) -> None:
        if sock.pid is not None and self.detached.pop(sock.pid, None) is sock:
            self.budgets.remove_detached(sock.client, sock)

    def connection_closed(self, conn: Connection, reason: str) -> None:
        """Called once by a connection as it closes: detach or end its sockets."""
        self.sessions.pop(conn.sid, None)
        timer = self._connect_timers.pop(conn, None)
        if timer is not None:
            timer.cancel()
        if conn.pending:
            conn.pending = False
            self.budgets.remove_pending(conn.client)
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
        if self.closing:
            if sid is not None and sid in self._final_polls and transport == POLLING:
                return self._final_poll(sid, request.method, cors)
            if sid is None:
                return _eio_error(
                    engineio.BAD_REQUEST, cors, status=503, message="server shutting down"
                )
        if transport == WEBSOCKET:
            return await self._websocket(request, sid, cors)
        if sid is None:
            if request.method != "GET":
                return _eio_error(engineio.BAD_HANDSHAKE_METHOD, cors)
            key = self.client_key(request)
            refusal = await self._admit(request, key)
            if refusal is not None:
                return self._refused(refusal, cors)
            conn = self._open(request, POLLING, key)
            body = self._open_packet(conn, ["websocket"])
            return Response(200, body, _text_headers(cors))
        conn_or_none = self.sessions.get(sid)
        if conn_or_none is None:
            return self._unknown_sid(sid, cors)
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
        # High-water mark 0: the connection hears as soon as the transport starts buffering,
        # and from then on counts that buffer against outbound_buffer_limit itself.
        limits = {"max_message_size": self.max_payload, "write_limit": 0}
        if sid is None:
            key = self.client_key(request)
            refusal = await self._admit(request, key)
            if refusal is not None:
                return self._refused(refusal, cors)
            # The session is opened (and counted) once the upgrade succeeds.
            return WebSocketUpgrade(lambda sock: self._open_websocket(sock, request, key), **limits)
        conn = self.sessions.get(sid)
        if conn is None:
            return self._unknown_sid(sid, cors)
        if conn.transport != POLLING or conn.probe is not None:
            # Already upgraded, or an upgrade in progress: like the reference server, accept
            # the WebSocket and close it at once, so the client sees a clean close.
            return WebSocketUpgrade(_Refused, **limits)
        return WebSocketUpgrade(lambda sock: _Probe(conn, sock), **limits)

    def _unknown_sid(self, sid: str, cors: list[tuple[str, str]] | None) -> Response:
        node, sep, _ = sid.partition("_")
        if self.sid_prefix and sep and f"{node}_" != self.sid_prefix:
            message = (
                f"Session ID unknown: it belongs to node {node[:16]!r}, not this one; route "
                "requests by the sid's prefix (the client reconnects and recovers its session)"
            )
            return _eio_error(engineio.UNKNOWN_SID, cors, message=message)
        return _eio_error(engineio.UNKNOWN_SID, cors)

    async def _admit(self, request: Request, key: str) -> Refusal | None:
        """Admission of a new Engine.IO session: the application's check, then the budgets
        (checked last: nothing awaits between them and the session being counted)."""
        refusal = None
        if self.allow_request is not None:
            refusal = await self.allow_request(request)
        if refusal is None:
            refusal = self.budgets.check_pending(key)
        if refusal is not None:
            code = refusal.data.get("code") if refusal.data else None
            self.stats.refused_handshakes[code if isinstance(code, str) else "refused"] += 1
        return refusal

    def _refused(self, refusal: Refusal, cors: list[tuple[str, str]] | None) -> Response:
        body: dict[str, Any] = {"code": engineio.FORBIDDEN[0], "message": refusal.message}
        if refusal.data is not None:
            body["data"] = refusal.data
        return Response.json(body, refusal.status, cors or [])

    def _open(self, request: Request, transport: str, key: str) -> Connection:
        sid = self.sid_prefix + new_id(16) if self.sid_prefix else new_id()
        conn = Connection(self, sid, request, transport)
        conn.client = key
        self.sessions[sid] = conn
        self.stats.handshakes += 1
        conn.schedule_ping()
        self._pend(conn)
        return conn

    def _connect_timed_out(self, conn: Connection) -> None:
        self._connect_timers.pop(conn, None)
        if conn.pending and not conn.closed:
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

    def _open_websocket(self, sock: WebSocket, request: Request, key: str) -> Connection | _Refused:
        if self.budgets.check_pending(key) is not None:
            # Other handshakes took the last places while this upgrade was completing.
            return _Refused(sock, "too many connections in progress")
        conn = self._open(request, WEBSOCKET, key)
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
            if not conn.receive(packet):
                return _eio_error(engineio.BAD_REQUEST, cors)
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
            "pending_connections": self.budgets.total_pending,
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
