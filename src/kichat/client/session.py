"""The client's side of Engine.IO 4 / Socket.IO 5 over one WebSocket, without I/O.

:class:`Session` outlives connections: it keeps what connection state recovery needs from one
connection to the next, exactly where socket.io-client 4.6+ keeps it:

* ``pid``, the private session id of the server's CONNECT reply (present only when the server
  has recovery on), and
* ``offset``, the last argument of the last event received, when that argument is a string (the
  server appends its recovery offset to every broadcast).

On the next connection, the CONNECT packet carries ``{pid, offset}`` (plus the caller's auth);
the server answers with the same ``pid`` when it restored the session (``recovered``), then
sends every broadcast missed in between, in order, before anything new.

The offset is stripped from the arguments handed to the application (socket.io-client leaves it
there for JavaScript handlers to ignore). One deliberate difference: when a connection is *not*
recovered, the offset of the old session is forgotten. socket.io-client keeps it, and would send
it on the next reconnect of the new session if no event arrived in between; it means nothing to
the new session (a restarted server counts offsets from 1 again) and could make the server skip
events or refuse a recovery that would have worked.

Usage: for each connection call :meth:`Session.begin`, then feed every WebSocket message to
:meth:`Session.receive` and act on what it returns (:class:`Send` packets to write, and the
happenings to handle). Nothing here sleeps, reads a clock or touches a socket.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kichat.sio import engineio, parser
from kichat.sio.errors import ParseError

__all__ = [
    "AckReceived",
    "Connected",
    "EventReceived",
    "Happening",
    "Opened",
    "Pinged",
    "Refused",
    "Send",
    "ServerClosed",
    "Session",
]


@dataclass(frozen=True, slots=True)
class Send:
    """A text packet to write on the WebSocket, as is."""

    text: str


@dataclass(frozen=True, slots=True)
class Opened:
    """The Engine.IO handshake is done; a CONNECT packet follows in the same batch."""

    info: engineio.OpenInfo


@dataclass(frozen=True, slots=True)
class Connected:
    """The server accepted the namespace connection."""

    sid: str
    recovered: bool


@dataclass(frozen=True, slots=True)
class Refused:
    """The server refused the namespace connection (CONNECT_ERROR)."""

    message: str
    data: Any


@dataclass(frozen=True, slots=True)
class Pinged:
    """A heartbeat from the server (already answered by a :class:`Send` of ``"3"``)."""


@dataclass(frozen=True, slots=True)
class EventReceived:
    """An event from the server, recovery offset removed from ``args``."""

    name: str
    args: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class AckReceived:
    """The reply to one of our requests (see :meth:`Session.request`)."""

    id: int
    args: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class ServerClosed:
    """The server ended the connection. ``final`` when it disconnected the socket on purpose
    (Socket.IO DISCONNECT): like socket.io-client, do not reconnect then. An Engine.IO CLOSE
    (a server shutting down) is worth reconnecting after."""

    reason: str
    final: bool = False


Happening = (
    Send | Opened | Connected | Refused | Pinged | EventReceived | AckReceived | ServerClosed
)


@dataclass(slots=True)
class _Partial:
    """A binary event or ack whose attachments are still arriving."""

    packet: parser.Packet
    buffers: list[bytes] = field(default_factory=list)


class Session:
    """Socket.IO client state for the main namespace, across connections."""

    def __init__(self, auth: Mapping[str, Any] | None = None) -> None:
        self.auth = dict(auth or {})
        self.pid: str | None = None
        self.offset: str | None = None
        self.sid: str | None = None
        self.connected = False
        self.recovered = False
        self.open: engineio.OpenInfo | None = None
        self._next_ack = 0
        self._partial: _Partial | None = None

    def begin(self) -> None:
        """A new transport is about to open: forget what belonged to the previous one."""
        self.sid = None
        self.connected = False
        self.open = None
        self._partial = None

    def connect_packet(self) -> str:
        """The CONNECT packet for the main namespace, with what recovery needs."""
        auth: dict[str, Any] = {}
        if self.pid is not None:
            # As socket.io-client: the recovery fields first, the caller's auth may override.
            auth["pid"] = self.pid
            if self.offset is not None:
                auth["offset"] = self.offset
        auth.update(self.auth)
        return engineio.MESSAGE + _text(parser.encode(parser.CONNECT, "/", auth))

    def request(self, name: str, *args: Any) -> tuple[int, Send]:
        """An event that asks for a reply: its ack id and the packet to send."""
        ack_id = self._next_ack
        self._next_ack += 1
        return ack_id, self.emit(name, *args, ack_id=ack_id)

    def emit(self, name: str, *args: Any, ack_id: int | None = None) -> Send:
        text = _text(parser.encode(parser.EVENT, "/", [name, *args], ack_id))
        return Send(engineio.MESSAGE + text)

    def receive(self, message: str | bytes) -> list[Happening]:
        """Handle one WebSocket message; :class:`ParseError` if it breaks the protocols (the
        caller should then drop the connection and reconnect)."""
        if isinstance(message, bytes):
            return self._attachment(message)
        if self._partial is not None:
            raise ParseError("text packet while binary attachments were expected")
        engineio.check_text_packet(message)
        kind = message[0]
        if kind == engineio.MESSAGE:
            return self._socketio(message[1:])
        if kind == engineio.PING:
            return [Send(engineio.PONG), Pinged()]
        if kind == engineio.OPEN:
            if self.open is not None:
                raise ParseError("a second OPEN packet on one connection")
            self.open = engineio.parse_open(message)
            return [Opened(self.open), Send(self.connect_packet())]
        if kind == engineio.CLOSE:
            return [ServerClosed("the gateway closed the connection")]
        return []  # NOOP, and PONG/UPGRADE which a server does not send on a WebSocket

    def _socketio(self, text: str) -> list[Happening]:
        if self.open is None:
            raise ParseError("Socket.IO packet before the Engine.IO handshake")
        packet = parser.decode(text)
        if packet.nsp != "/":
            return []  # we only ever join the main namespace
        if packet.attachments:
            self._partial = _Partial(packet)
            return []
        return self._complete(packet)

    def _attachment(self, data: bytes) -> list[Happening]:
        partial = self._partial
        if partial is None:
            raise ParseError("unexpected binary message")
        partial.buffers.append(data)
        if len(partial.buffers) < partial.packet.attachments:
            return []
        self._partial = None
        packet = partial.packet
        packet.data = parser.reconstruct(packet.data, partial.buffers)
        return self._complete(packet)

    def _complete(self, packet: parser.Packet) -> list[Happening]:
        ptype = packet.type
        if ptype in (parser.EVENT, parser.BINARY_EVENT):
            return [self._event(packet.data)]
        if ptype in (parser.ACK, parser.BINARY_ACK):
            if packet.id is None:
                raise ParseError("ACK without an id")
            return [AckReceived(packet.id, tuple(packet.data))]
        if ptype == parser.CONNECT:
            return [self._connected(packet.data if packet.has_data else None)]
        if ptype == parser.CONNECT_ERROR:
            data = packet.data
            if isinstance(data, dict):
                return [Refused(str(data.get("message", "refused")), data.get("data"))]
            return [Refused(str(data), None)]
        if ptype == parser.DISCONNECT:
            self.connected = False
            return [ServerClosed("the gateway disconnected this client", final=True)]
        raise ParseError(f"unexpected packet type {ptype} from a server")

    def _connected(self, body: Any) -> Connected:
        if not isinstance(body, dict) or not isinstance(body.get("sid"), str):
            raise ParseError("CONNECT reply without a sid")
        pid = body.get("pid")
        pid = pid if isinstance(pid, str) else None
        self.recovered = pid is not None and pid == self.pid
        if not self.recovered:
            self.offset = None  # the old session's offsets mean nothing to a new one
        self.pid = pid
        self.sid = body["sid"]
        self.connected = True
        return Connected(body["sid"], self.recovered)

    def _event(self, data: list[Any]) -> EventReceived:
        name = data[0]
        args = data[1:]
        if self.pid is not None and args and isinstance(args[-1], str):
            self.offset = args.pop()
        return EventReceived(str(name), tuple(args))


def _text(encoded: tuple[bytes, list[bytes]]) -> str:
    head, buffers = encoded
    if buffers:
        raise ValueError("binary data cannot be sent to the gateway")
    return head.decode("utf-8")
