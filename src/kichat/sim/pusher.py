"""The server side of Pusher protocol 7 as a pure state machine (no asyncio, no sockets).

:class:`PusherSession` is one client connection: text frames in, decisions and frames out. Time
is passed in as ``now`` (any monotonic clock, in seconds), so the heartbeat rules can be tested
without an event loop. The I/O layer (:mod:`kichat.sim.server`) owns the socket, the clock and
the channel index, and decides whether a subscription is accepted (faults, auth).

Frame shapes follow Kick's Pusher usage (wire.md §1.4): ``data`` of ``connection_established``,
``subscription_succeeded`` and application events is a JSON *string*; ``data`` of
``pusher:error``, ``pusher:ping``/``pusher:pong`` and ``pusher:subscription_error`` is an object.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from kichat.errors import ClientInputError

PROTOCOL_VERSION: Final = "7"
# Pusher's own limit on an event's data (docs.bird.com, wire.md §6.4).
MAX_DATA_BYTES: Final = 10 * 1024
# Pusher's channel-name alphabet and length limit.
_CHANNEL_RE: Final = re.compile(r"[A-Za-z0-9_\-=@,.;]{1,164}")

# Texts Pusher uses for its close codes (wire.md §1.5); also the default fault messages.
CLOSE_MESSAGES: Final[dict[int, str]] = {
    4001: "App key does not exist in this cluster",
    4003: "App is disabled",
    4004: "Over connection quota",
    4005: "Path not found",
    4006: "Invalid version string format",
    4007: "Unsupported protocol version",
    4008: "No protocol version supplied",
    4009: "Connection is unauthorized",
    4100: "Over capacity",
    4200: "Please reconnect immediately",
    4201: "Pong reply not received",
    4202: "Closed after inactivity",
    4301: "Client event rejected due to rate limit",
}


def close_message(code: int) -> str:
    return CLOSE_MESSAGES.get(code, "Closed by the Kick simulator")


# ---------------------------------------------------------------------------------------------
# Frames


def _dumps(obj: object) -> str:
    return orjson.dumps(obj).decode()


def connection_established(socket_id: str, activity_timeout: float) -> str:
    timeout: float = int(activity_timeout) if activity_timeout.is_integer() else activity_timeout
    inner = _dumps({"socket_id": socket_id, "activity_timeout": timeout})
    return _dumps({"event": "pusher:connection_established", "data": inner})


def error_frame(code: int | None, message: str) -> str:
    return _dumps({"event": "pusher:error", "data": {"code": code, "message": message}})


def subscription_succeeded(channel: str, data: str = "{}") -> str:
    return _dumps(
        {"event": "pusher_internal:subscription_succeeded", "channel": channel, "data": data}
    )


def subscription_error(channel: str, error: str, status: int, kind: str = "AuthError") -> str:
    data = {"type": kind, "error": error, "status": status}
    return _dumps({"event": "pusher:subscription_error", "channel": channel, "data": data})


PING_FRAME: Final = _dumps({"event": "pusher:ping", "data": {}})
PONG_FRAME: Final = _dumps({"event": "pusher:pong", "data": {}})


def encode_data(data: Any) -> bytes:
    """Encode an event's ``data`` once (the inner JSON); refuse what Pusher would refuse."""
    encoded = orjson.dumps(data)
    if len(encoded) > MAX_DATA_BYTES:
        raise ClientInputError(
            "payload_too_large",
            f"event data is {len(encoded)} bytes; Pusher refuses more than {MAX_DATA_BYTES}",
        )
    return encoded


def event_frame(event: str, channel: str, data_json: bytes) -> bytes:
    """An application event frame, ``data`` double-encoded like Kick's. Built once per publish."""
    return orjson.dumps({"event": event, "channel": channel, "data": data_json.decode()})


# ---------------------------------------------------------------------------------------------
# Connection-time checks


def check_connect(path_key: str, query: dict[str, str], app_key: str) -> tuple[int, str] | None:
    """Pusher's checks on ``/app/{key}?protocol=...``: ``(code, message)`` to refuse, else None."""
    if path_key != app_key:
        return 4001, f"App key {path_key} does not exist in this cluster"
    protocol = query.get("protocol")
    if protocol is None:
        # Pusher documents 4008 for a missing protocol (wire.md §1.2, §7); we enforce it.
        return 4008, close_message(4008)
    if protocol != PROTOCOL_VERSION:
        return 4007, f"Unsupported protocol version {protocol}; the simulator speaks 7"
    return None


def channel_auth(
    app_key: str, secret: str, socket_id: str, channel: str, channel_data: str | None
) -> str:
    """The ``auth`` string a Pusher auth endpoint would return for this subscription."""
    message = (
        f"{socket_id}:{channel}"
        if channel_data is None
        else f"{socket_id}:{channel}:{channel_data}"
    )
    digest = hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()
    return f"{app_key}:{digest}"


def needs_auth(channel: str) -> bool:
    return channel.startswith(("private-", "presence-"))


# ---------------------------------------------------------------------------------------------
# Session


@dataclass(frozen=True, slots=True)
class Subscribe:
    """The client asked to subscribe; the I/O layer answers with confirm/refuse (or swallows it)."""

    channel: str
    auth: str | None
    channel_data: str | None


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """The client left a channel it was subscribed to (Pusher sends no ack)."""

    channel: str


@dataclass(frozen=True, slots=True)
class Reply:
    """Send this frame back to the client (pong, or an error about its frame)."""

    frame: str


@dataclass(frozen=True, slots=True)
class Ignored:
    """A frame that needs no answer (a pong, an unknown event); ``event`` for debug logs."""

    event: str


Inbound = Subscribe | Unsubscribe | Reply | Ignored


@dataclass(frozen=True, slots=True)
class SendPing:
    frame: str = PING_FRAME


@dataclass(frozen=True, slots=True)
class CloseFor:
    """Send ``pusher:error`` with this code, then close the WebSocket with it."""

    code: int
    message: str


TimerAction = SendPing | CloseFor | None


@dataclass
class PusherSession:
    """One client connection of a Pusher protocol 7 server.

    Heartbeat (Pusher's rule): after ``activity_timeout`` seconds without a frame from the client,
    send ``pusher:ping``; if no ``pusher:pong`` arrives within ``pong_timeout``, close with 4201.
    Any other frame does not count as the pong (strict on purpose, so a client that never answers
    pings is caught even while it is sending other frames).
    """

    socket_id: str
    activity_timeout: float
    pong_timeout: float
    now: float
    channels: set[str] = field(default_factory=set)
    last_seen: float = field(init=False)
    ping_sent_at: float | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.last_seen = self.now

    def handshake(self) -> str:
        return connection_established(self.socket_id, self.activity_timeout)

    # -- frames from the client ------------------------------------------------------------------

    def receive(self, text: str | bytes, now: float) -> Inbound:
        self.last_seen = now
        try:
            msg = orjson.loads(text)
        except orjson.JSONDecodeError:
            return Reply(error_frame(None, "Invalid JSON"))
        if not isinstance(msg, dict) or not isinstance(msg.get("event"), str):
            return Reply(error_frame(None, "A frame must be an object with an 'event' string"))
        event: str = msg["event"]
        data = msg.get("data")
        if event == "pusher:ping":
            return Reply(PONG_FRAME)
        if event == "pusher:pong":
            self.ping_sent_at = None
            return Ignored(event)
        if event == "pusher:subscribe":
            return self._subscribe(data)
        if event == "pusher:unsubscribe":
            channel = data.get("channel") if isinstance(data, dict) else None
            if isinstance(channel, str) and channel in self.channels:
                self.channels.discard(channel)
                return Unsubscribe(channel)
            return Ignored(event)
        if event.startswith("client-"):
            return Reply(error_frame(None, "Client events are not enabled for this app"))
        return Ignored(event)

    def _subscribe(self, data: object) -> Inbound:
        if not isinstance(data, dict):
            return Reply(error_frame(None, "pusher:subscribe needs a data object"))
        channel = data.get("channel")
        if not isinstance(channel, str) or not _CHANNEL_RE.fullmatch(channel):
            return Reply(error_frame(None, f"Invalid channel name {channel!r}"))
        auth = data.get("auth")
        channel_data = data.get("channel_data")
        return Subscribe(
            channel,
            auth if isinstance(auth, str) and auth else None,
            channel_data if isinstance(channel_data, str) else None,
        )

    # -- decisions of the I/O layer --------------------------------------------------------------

    def confirm(self, sub: Subscribe) -> str:
        """Mark ``sub`` subscribed; return the ack. Re-subscribing is acked again (idempotent)."""
        self.channels.add(sub.channel)
        data = "{}"
        if sub.channel.startswith("presence-") and sub.channel_data is not None:
            data = _presence_data(sub.channel_data)
        return subscription_succeeded(sub.channel, data)

    def refuse(self, sub: Subscribe, error: str, status: int = 401) -> str:
        self.channels.discard(sub.channel)
        return subscription_error(sub.channel, error, status)

    # -- heartbeat -------------------------------------------------------------------------------

    def deadline(self) -> float:
        """When :meth:`on_timer` next has something to do (it may find nothing if frames came)."""
        if self.ping_sent_at is not None:
            return self.ping_sent_at + self.pong_timeout
        return self.last_seen + self.activity_timeout

    def on_timer(self, now: float) -> TimerAction:
        if self.ping_sent_at is not None:
            if now >= self.ping_sent_at + self.pong_timeout:
                return CloseFor(4201, close_message(4201))
            return None
        if now >= self.last_seen + self.activity_timeout:
            self.ping_sent_at = now
            return SendPing()
        return None

    def resume(self, now: float) -> None:
        """Restart the idle clock (after the server itself was frozen)."""
        self.last_seen = now
        self.ping_sent_at = None


def _presence_data(channel_data: str) -> str:
    try:
        member = orjson.loads(channel_data)
    except orjson.JSONDecodeError:
        member = {}
    user_id = str(member.get("user_id", "")) if isinstance(member, dict) else ""
    info = member.get("user_info") if isinstance(member, dict) else None
    presence = {"ids": [user_id], "hash": {user_id: info}, "count": 1}
    return _dumps({"presence": presence})
