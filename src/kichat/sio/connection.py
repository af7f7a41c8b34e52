"""One client connection: an Engine.IO session and the Socket.IO state riding on it.

A :class:`Connection` owns
* its transport: long-polling (a pending GET and POSTs) or a :class:`~kichat.http.WebSocket`,
  and the polling-to-WebSocket upgrade (``2probe`` / ``3probe`` / ``6`` / ``5``);
* the heartbeat: the server pings every ``ping_interval``; no pong within ``ping_timeout``
  closes the session;
* the **outbound queue**: everything sent to this client (direct packets and broadcasts) is a
  list of pre-built WebSocket frames appended here; the server's flusher writes the queue in
  one ``write`` per connection, so frames queued in the same loop iteration share a syscall;
* Socket.IO decoding (binary attachments included) and dispatch to namespaces.

Slow consumers: what the process holds for a client (its queue and its transport's write
buffer) never exceeds the outbound buffer limit. The transport buffers only once the kernel's
send buffer is full (``on_pause_writing``: the client is not keeping up); from then on, a write
that would take it past the limit cuts the client off (reason ``slow client``) instead. Until
then nothing is counted on the write path. A polling client whose queue grows past the limit
is closed the same way. The kernel's own send buffer comes on top: see the README.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Final

from kichat.http import WebSocket, websocket
from kichat.sio import engineio, parser
from kichat.sio.errors import ParseError

if TYPE_CHECKING:
    from kichat.http import Request
    from kichat.sio.namespace import Socket
    from kichat.sio.server import Server

log = logging.getLogger("kichat.sio")

POLLING: Final = "polling"
WEBSOCKET: Final = "websocket"

# Why a connection ended. The first four may be recovered (connection state recovery).
TRANSPORT_CLOSE: Final = "transport close"
TRANSPORT_ERROR: Final = "transport error"
PING_TIMEOUT: Final = "ping timeout"
SLOW_CLIENT: Final = "slow client"
PARSE_ERROR: Final = "parse error"
FORCED_CLOSE: Final = "forced close"
CONNECT_TIMEOUT: Final = "connect timeout"
SERVER_SHUTDOWN: Final = "server shutting down"
RECOVERABLE: Final = frozenset({TRANSPORT_CLOSE, TRANSPORT_ERROR, PING_TIMEOUT, SLOW_CLIENT})


class Connection:
    """An Engine.IO session (one client, whatever its transport)."""

    __slots__ = (
        "_binary",
        "_queued_bytes",
        "_queued_frames",
        "_timer",
        "backlogged",
        "client",
        "closed",
        "dirty",
        "holding",
        "peer",
        "pending",
        "poll",
        "posting",
        "probe",
        "queue",
        "request",
        "server",
        "sid",
        "sockets",
        "transport",
        "upgrading",
        "ws",
    )

    def __init__(self, server: Server, sid: str, request: Request, transport: str) -> None:
        self.server = server
        self.sid = sid
        self.request = request
        self.peer = request.peer
        self.client = self.peer  # the key of the client's budgets (see kichat.sio.admission)
        self.pending = False  # no socket joined a namespace yet: counted as a pending session
        self.transport = transport
        self.ws: WebSocket | None = None
        self.probe: WebSocket | None = None  # a WebSocket being upgraded to
        self.upgrading = False  # the probe was answered; long-polls now return at once
        self.queue: list[bytes] = []
        # Polling: how much of the queue was already counted against the limit.
        self._queued_frames = 0
        self._queued_bytes = 0
        self.backlogged = False  # the transport holds bytes the kernel would not take yet
        self.dirty = False
        self.poll: asyncio.Future[None] | None = None  # the pending long-poll GET
        self.posting = False
        self.closed = False
        self.sockets: dict[str, Socket] = {}
        # Namespaces whose CONNECT is being restored by a session store: their packets wait.
        self.holding: dict[str, list[parser.Packet]] = {}
        self._binary: parser.Packet | None = None  # a packet waiting for its attachments
        self._timer: asyncio.TimerHandle | None = None

    # -- sending -------------------------------------------------------------------------------

    def send(self, frames: bytes) -> None:
        """Queue complete WebSocket frames; the server's flusher writes them soon."""
        if self.closed:
            return
        if not self.dirty:
            self.dirty = True
            self.server.mark_dirty(self)
        self.queue.append(frames)

    def flush(self) -> None:
        """Called by the server's flusher (never while iterating anything we may change)."""
        self.dirty = False
        queue = self.queue
        if not queue or self.closed:
            return
        if self.transport == WEBSOCKET:
            ws = self.ws
            assert ws is not None
            self.server.stats.writes += 1
            if len(queue) == 1:
                data = queue[0]
            elif self.server.coalesce_writes:
                data = b"".join(queue)
            else:
                # Conformance fixture only: one packet per write, spaced out in time.
                ws.write(queue.pop(0))
                self.dirty = True
                asyncio.get_running_loop().call_later(
                    self.server.packet_spacing, self.server.mark_dirty, self
                )
                return
            queue.clear()
            # Counted only while the transport buffers (the kernel took everything until then).
            if (
                self.backlogged
                and ws.write_buffer_size + len(data) > self.server.outbound_buffer_limit
            ):
                self._too_slow()
                return
            ws.write(data)
            return
        if self.poll is not None:
            if not self.poll.done():
                self.poll.set_result(None)
            return
        # No long-poll to answer: count what was queued since the last check (each frame once,
        # not the whole queue at every flush).
        self._queued_bytes += sum(map(len, queue[self._queued_frames :]))
        self._queued_frames = len(queue)
        if self._queued_bytes > self.server.outbound_buffer_limit:
            self._too_slow()

    def _too_slow(self) -> None:
        self.server.stats.slow_clients += 1
        log.info("closing slow client %s (%s)", self.sid, self.peer)
        self.close(SLOW_CLIENT)

    def take_payload(self) -> bytes:
        payload = engineio.frames_to_payload(self.queue)
        self.queue.clear()
        self._queued_frames = self._queued_bytes = 0
        return payload

    # -- heartbeat -----------------------------------------------------------------------------

    def schedule_ping(self) -> None:
        self._cancel_timer()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.server.ping_interval, self._ping)

    def _ping(self) -> None:
        self.send(engineio.PING_FRAME)
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.server.ping_timeout, self._ping_timed_out)

    def _ping_timed_out(self) -> None:
        self._timer = None
        self.server.stats.ping_timeouts += 1
        self.close(PING_TIMEOUT)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- receiving -----------------------------------------------------------------------------

    def receive(self, packet: str | bytes) -> bool:
        """One Engine.IO packet from the client (text with its type digit, or binary data).
        False if it broke the protocol: the connection is then closed."""
        if self.closed:
            return True
        try:
            self._receive(packet)
        except ParseError as exc:
            # One line, bounded: error messages quote at most a few characters of the packet.
            log.info("closing %s (%s): %s", self.sid, self.peer, exc)
            self.server.stats.parse_errors += 1
            self.close(PARSE_ERROR)
            return False
        return True

    def _receive(self, packet: str | bytes) -> None:
        if isinstance(packet, bytes):
            self._on_attachment(packet)
            return
        kind = packet[:1]
        if kind == engineio.MESSAGE:
            self._on_socketio_text(packet[1:])
        elif kind == engineio.PONG:
            self.schedule_ping()
        elif kind == engineio.CLOSE:
            self.close(TRANSPORT_CLOSE, client_initiated=True)
        elif kind in (engineio.NOOP, engineio.UPGRADE):
            pass
        else:
            # Including "2": Engine.IO 4 clients never ping, probes arrive on the probing socket.
            raise ParseError(f"invalid Engine.IO packet {packet[:8]!r}")

    def _on_socketio_text(self, text: str) -> None:
        if self._binary is not None:
            raise ParseError("text packet while binary attachments were expected")
        packet = parser.decode(text)
        packet.size = len(text)
        if packet.attachments:
            self._binary = packet
            return
        if packet.type in (parser.BINARY_EVENT, parser.BINARY_ACK):
            packet.type = parser.EVENT if packet.type == parser.BINARY_EVENT else parser.ACK
        self.server.dispatch(self, packet)

    def _on_attachment(self, data: bytes) -> None:
        packet = self._binary
        if packet is None:
            raise ParseError("binary data without a binary packet")
        packet.buffers.append(data)
        packet.size += len(data)
        if packet.size > self.server.max_payload:
            # maxPayload bounds a packet, whatever number of messages it comes in.
            raise ParseError("binary packet larger than maxPayload")
        if len(packet.buffers) < packet.attachments:
            return
        self._binary = None
        packet.data = parser.reconstruct(packet.data, packet.buffers)
        packet.type = parser.EVENT if packet.type == parser.BINARY_EVENT else parser.ACK
        self.server.dispatch(self, packet)

    # -- WebSocket handler interface -----------------------------------------------------------

    def on_message(self, data: str | bytes) -> None:
        self.receive(data)

    def on_close(self, code: int, reason: str) -> None:
        if not self.closed:
            self.close(TRANSPORT_CLOSE if code in (1000, 1001, 1005) else TRANSPORT_ERROR,
                       transport_gone=True)  # fmt: skip

    def on_pause_writing(self) -> None:
        # The kernel's send buffer is full and the transport keeps the rest (its high-water
        # mark is 0): from now on, flush counts what it holds against the limit.
        self.backlogged = True
        ws = self.ws
        if ws is not None and ws.write_buffer_size > self.server.outbound_buffer_limit:
            # One write bigger than the limit on its own: we are inside that write.
            asyncio.get_running_loop().call_soon(self._too_slow_unless_closed)

    def on_resume_writing(self) -> None:
        self.backlogged = False  # everything reached the kernel again

    def _too_slow_unless_closed(self) -> None:
        if not self.closed:
            self._too_slow()

    # -- upgrade -------------------------------------------------------------------------------

    def complete_upgrade(self, sock: WebSocket) -> None:
        """The client sent ``5`` on the probing WebSocket: it is now the transport."""
        self.probe = None
        self.upgrading = False
        self.ws = sock
        self.transport = WEBSOCKET
        self.backlogged = sock.write_buffer_size > 0
        sock.handler = self
        self.server.stats.upgrades += 1
        if self.poll is not None and not self.poll.done():
            self.poll.set_result(None)
        if self.queue and not self.dirty:
            self.dirty = True
            self.server.mark_dirty(self)

    # -- closing -------------------------------------------------------------------------------

    def close(
        self, reason: str, *, client_initiated: bool = False, transport_gone: bool = False
    ) -> None:
        """End the session. What is still queued leaves before the close (a server shutting
        down flushes every client), except for a slow client, whose buffers are full."""
        if self.closed:
            return
        self.closed = True
        self._cancel_timer()
        self.server.connection_closed(self, reason)
        going_away = reason == SERVER_SHUTDOWN
        if self.probe is not None:
            self.probe.close(websocket.CLOSE_GOING_AWAY if going_away else websocket.CLOSE_NORMAL)
            self.probe = None
        if self.transport == WEBSOCKET:
            if not transport_gone and self.ws is not None:
                if reason == SLOW_CLIENT:
                    self.ws.abort()  # its buffers are full: a close frame would queue behind them
                elif reason == PARSE_ERROR:
                    self.ws.close(websocket.CLOSE_PROTOCOL_ERROR, PARSE_ERROR)
                else:
                    if self.queue:
                        self.ws.write(b"".join(self.queue))
                    # 1001 "going away": socket.io-client reconnects (here after a restart, or
                    # to another instance), as on any transport close.
                    self.ws.close(websocket.CLOSE_GOING_AWAY if going_away else 1000)
            self.queue.clear()
        elif going_away and not client_initiated:
            # Long-polling: what is queued first, then the close packet, so the client
            # reconnects like a WebSocket client told 1001. In two responses: socket.io-client
            # handles the packets that share a payload with a close packet only after its
            # disconnect. A GET not pending yet (the client is between two polls) is answered
            # by the server while it drains (Server.close).
            poll = self.poll
            if self.queue or poll is None or poll.done():
                self.server.hold_final_poll(self)
            else:
                self.queue.append(engineio.CLOSE_FRAME)
            if poll is not None and not poll.done():
                poll.set_result(None)
        elif self.poll is not None and not self.poll.done():
            # Answer the pending GET: what is queued, then noop if the client asked to close,
            # the close packet otherwise.
            self.queue.append(engineio.NOOP_FRAME if client_initiated else engineio.CLOSE_FRAME)
            self.poll.set_result(None)
        else:
            self.queue.clear()
