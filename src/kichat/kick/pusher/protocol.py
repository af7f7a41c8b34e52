"""Pusher protocol 7, client side, as a pure state machine.

No asyncio, no sockets, no clock reads: the caller feeds received text frames with the current
time (``receive``), drains frames to send (``data_to_send``), and calls ``on_timer`` when
``next_deadline`` has passed. One instance lives for exactly one WebSocket connection; a
reconnect gets a fresh instance, which is how "the server remembers no subscriptions after a
reconnect" is modelled.

Frames (wire.md §1.4; ``<-`` received, ``->`` sent, inner quotes unescaped for reading)::

    <- {"event":"pusher:connection_established",
        "data":"{"socket_id":"1.2","activity_timeout":120}"}
    -> {"event":"pusher:subscribe","data":{"auth":"","channel":"chatrooms.668.v2"}}
    <- {"event":"pusher_internal:subscription_succeeded","channel":"chatrooms.668.v2","data":"{}"}
    <- {"event":"App\\Events\\ChatMessageEvent","channel":"chatrooms.668.v2",
        "data":"<a JSON document, encoded as a string>"}

The ``data`` of control events may be a JSON string or an object; both are accepted everywhere.
The ``data`` of application events is passed on exactly as received (normally a JSON string):
decoding it is the relay's job and happens once per event, never here.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Final, TypeAlias

import orjson

from kichat.errors import PusherProtocolError

__all__ = [
    "ChannelEvent",
    "CloseAction",
    "ConnectionEstablished",
    "ConnectionStale",
    "ProtocolState",
    "PusherClientProtocol",
    "PusherErrorReceived",
    "PusherEvent",
    "SubscriptionFailed",
    "SubscriptionSucceeded",
    "classify_close",
]

# Control events live in these two namespaces; everything else is an application event.
_CONTROL_PREFIXES: Final = ("pusher:", "pusher_internal:")

_PING: Final = '{"event":"pusher:ping","data":{}}'
_PONG: Final = '{"event":"pusher:pong","data":{}}'


# --------------------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class ConnectionEstablished:
    """The server accepted the connection. ``activity_timeout`` is the server's value (seconds)."""

    socket_id: str
    activity_timeout: float | None


@dataclass(frozen=True, slots=True)
class SubscriptionSucceeded:
    channel: str


@dataclass(frozen=True, slots=True)
class SubscriptionFailed:
    """``pusher:subscription_error`` (or a ``pusher:error`` naming a channel)."""

    channel: str
    error: str
    status: int | None


@dataclass(frozen=True, slots=True)
class ChannelEvent:
    """An application event. ``data`` is the frame's ``data`` field as received."""

    channel: str
    event: str
    data: object


@dataclass(frozen=True, slots=True)
class PusherErrorReceived:
    """``pusher:error``. The server normally closes right after one that carries a 4xxx code."""

    code: int | None
    message: str


@dataclass(frozen=True, slots=True)
class ConnectionStale:
    """The server showed no sign of life in time; the caller should drop the connection."""

    reason: str


PusherEvent: TypeAlias = (
    ConnectionEstablished
    | SubscriptionSucceeded
    | SubscriptionFailed
    | ChannelEvent
    | PusherErrorReceived
    | ConnectionStale
)


# --------------------------------------------------------------------------------- close codes


class CloseAction(enum.Enum):
    """What to do after a connection ended, by close code (wire.md §1.5)."""

    FATAL = "fatal"  # 4000-4099: reconnecting unchanged cannot help
    BACKOFF = "backoff"  # 4100-4199: come back after at least a second
    IMMEDIATE = "immediate"  # 4200-4299: come back at once (still rate-limited by the caller)
    BACKOFF_JITTER = "backoff_jitter"  # network trouble and everything else


def classify_close(code: int | None) -> CloseAction:
    """Map a WebSocket close code (or a ``pusher:error`` code) to a reconnect action.

    ``None`` stands for "no close frame at all": a refused or reset TCP connection, a timeout.
    """
    if code is None:
        return CloseAction.BACKOFF_JITTER
    if 4000 <= code <= 4099:
        return CloseAction.FATAL
    if 4100 <= code <= 4199:
        return CloseAction.BACKOFF
    if 4200 <= code <= 4299:
        return CloseAction.IMMEDIATE
    return CloseAction.BACKOFF_JITTER


# ------------------------------------------------------------------------------------ protocol


class ProtocolState(enum.Enum):
    CONNECTING = "connecting"  # WebSocket open, waiting for pusher:connection_established
    CONNECTED = "connected"
    STALE = "stale"  # a keepalive or handshake deadline passed; the connection is dead to us


class PusherClientProtocol:
    """Client side of one Pusher protocol 7 connection.

    Keepalive, as pusher-js does it: after ``activity_timeout`` seconds without receiving anything
    (the smaller of ours and the server's), send ``pusher:ping``; if nothing at all arrives within
    ``pong_timeout`` after that, report :class:`ConnectionStale`. Every received frame, even a
    malformed one, counts as life. ``handshake_timeout`` bounds the wait for
    ``connection_established`` after the WebSocket opened.
    """

    __slots__ = (
        "_activity_timeout",
        "_deferred",
        "_handshake_deadline",
        "_handshake_timeout",
        "_last_activity",
        "_out",
        "_own_activity_timeout",
        "_ping_sent_at",
        "_pong_timeout",
        "socket_id",
        "state",
    )

    def __init__(
        self,
        *,
        now: float,
        activity_timeout: float = 120.0,
        pong_timeout: float = 30.0,
        handshake_timeout: float = 10.0,
    ) -> None:
        if not (activity_timeout > 0 and pong_timeout > 0 and handshake_timeout > 0):
            raise ValueError("timeouts must be positive")
        self.state = ProtocolState.CONNECTING
        self.socket_id: str | None = None
        self._own_activity_timeout = activity_timeout
        self._activity_timeout = activity_timeout
        self._pong_timeout = pong_timeout
        self._handshake_timeout = handshake_timeout
        self._handshake_deadline = now + handshake_timeout
        self._last_activity = now
        self._ping_sent_at: float | None = None
        self._out: list[str] = []
        # Subscriptions asked for before connection_established; dict as an ordered set.
        self._deferred: dict[str, None] = {}

    @property
    def activity_timeout(self) -> float:
        """The effective idle time before we ping: min(ours, the server's)."""
        return self._activity_timeout

    # -- input ---------------------------------------------------------------------------------

    def receive(self, text: str | bytes, now: float) -> list[PusherEvent]:
        """Feed one received frame. Raises :class:`PusherProtocolError` if it is malformed.

        An application event costs one ``orjson.loads`` of the outer frame and nothing more.
        """
        self._last_activity = now
        self._ping_sent_at = None
        try:
            frame = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise PusherProtocolError(f"frame is not valid JSON: {exc}") from exc
        if type(frame) is not dict:
            raise PusherProtocolError("frame is not a JSON object")
        event = frame.get("event")
        if type(event) is not str:
            raise PusherProtocolError("frame has no string 'event'")
        if not event.startswith(_CONTROL_PREFIXES):
            channel = frame.get("channel")
            if type(channel) is not str:
                raise PusherProtocolError(f"event {event[:60]!r} has no string 'channel'")
            return [ChannelEvent(channel, event, frame.get("data"))]
        return self._receive_control(event, frame)

    def _receive_control(self, event: str, frame: dict[str, object]) -> list[PusherEvent]:
        if event == "pusher:ping":
            self._out.append(_PONG)
            return []
        if event == "pusher:connection_established":
            return [self._established(frame)]
        if event == "pusher_internal:subscription_succeeded":
            return [SubscriptionSucceeded(_channel_of(frame, event))]
        if event == "pusher:subscription_error":
            return [_subscription_failed(_channel_of(frame, event), _decode_data(frame))]
        if event == "pusher:error":
            data = _decode_data(frame)
            channel = frame.get("channel")
            if type(channel) is str:
                return [_subscription_failed(channel, data)]
            return [PusherErrorReceived(*_code_and_message(data))]
        # pusher:pong, pusher_internal:subscription_count, presence and signin events: the
        # frame already counted as activity, nothing else to do for a public-channel reader.
        return []

    def _established(self, frame: dict[str, object]) -> ConnectionEstablished:
        data = _decode_data(frame)
        if not isinstance(data, dict):
            raise PusherProtocolError("connection_established without an object in 'data'")
        socket_id = data.get("socket_id")
        if type(socket_id) is not str or not socket_id:
            raise PusherProtocolError("connection_established without a string 'socket_id'")
        server_timeout = _positive_number(data.get("activity_timeout"))
        self._activity_timeout = (
            min(self._own_activity_timeout, server_timeout)
            if server_timeout is not None
            else self._own_activity_timeout
        )
        self.socket_id = socket_id
        if self.state is ProtocolState.CONNECTING:
            self.state = ProtocolState.CONNECTED
            for channel in self._deferred:
                self._out.append(_subscribe_frame(channel))
            self._deferred.clear()
        return ConnectionEstablished(socket_id, server_timeout)

    # -- commands ------------------------------------------------------------------------------

    def subscribe(self, channel: str) -> None:
        """Queue ``pusher:subscribe``; before ``connection_established`` it waits for it.

        Calling it again for the same channel re-sends it (that is how an unacknowledged
        subscribe is retried).
        """
        if not channel:
            raise ValueError("channel must be a non-empty string")
        if self.state is ProtocolState.CONNECTED:
            self._out.append(_subscribe_frame(channel))
        elif self.state is ProtocolState.CONNECTING:
            self._deferred[channel] = None

    def unsubscribe(self, channel: str) -> None:
        """Queue ``pusher:unsubscribe`` (Pusher sends no acknowledgement)."""
        if self.state is ProtocolState.CONNECTED:
            self._out.append(_unsubscribe_frame(channel))
        else:
            self._deferred.pop(channel, None)

    # -- output and timers ---------------------------------------------------------------------

    def data_to_send(self) -> list[str]:
        """Return the text frames to send, in order, and forget them."""
        out = self._out
        if not out:
            return []
        self._out = []
        return out

    @property
    def has_data_to_send(self) -> bool:
        return bool(self._out)

    def next_deadline(self) -> float | None:
        """When ``on_timer`` must next be called, or ``None`` if never."""
        if self.state is ProtocolState.CONNECTED:
            if self._ping_sent_at is None:
                return self._last_activity + self._activity_timeout
            return self._ping_sent_at + self._pong_timeout
        if self.state is ProtocolState.CONNECTING:
            return self._handshake_deadline
        return None

    def on_timer(self, now: float) -> list[PusherEvent]:
        """Advance the keepalive and handshake timers. Early calls are harmless."""
        if self.state is ProtocolState.CONNECTING:
            if now >= self._handshake_deadline:
                self.state = ProtocolState.STALE
                return [
                    ConnectionStale(
                        f"no pusher:connection_established within {self._handshake_timeout:g} s"
                    )
                ]
        elif self.state is ProtocolState.CONNECTED:
            if self._ping_sent_at is None:
                if now >= self._last_activity + self._activity_timeout:
                    self._out.append(_PING)
                    self._ping_sent_at = now
            elif now >= self._ping_sent_at + self._pong_timeout:
                self.state = ProtocolState.STALE
                return [ConnectionStale(f"no reply to pusher:ping within {self._pong_timeout:g} s")]
        return []


# ------------------------------------------------------------------------------------- helpers


def _subscribe_frame(channel: str) -> str:
    return orjson.dumps(
        {"event": "pusher:subscribe", "data": {"auth": "", "channel": channel}}
    ).decode()


def _unsubscribe_frame(channel: str) -> str:
    return orjson.dumps({"event": "pusher:unsubscribe", "data": {"channel": channel}}).decode()


def _decode_data(frame: dict[str, object]) -> object:
    """A control event's ``data``: decoded if it is a JSON string, as is otherwise."""
    data = frame.get("data")
    if isinstance(data, str):
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            return data  # pusher-js keeps undecodable strings too
    return data


def _channel_of(frame: dict[str, object], event: str) -> str:
    channel = frame.get("channel")
    if type(channel) is not str:
        raise PusherProtocolError(f"{event} has no string 'channel'")
    return channel


def _positive_number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if number > 0 and math.isfinite(number) else None


def _code_and_message(data: object) -> tuple[int | None, str]:
    if isinstance(data, dict):
        code = data.get("code")
        message = data.get("message")
        return (
            code if type(code) is int else None,
            message if isinstance(message, str) else "",
        )
    if isinstance(data, str):
        return None, data
    return None, ""


def _subscription_failed(channel: str, data: object) -> SubscriptionFailed:
    # Shapes seen: {"type":"AuthError","error":"...","status":401} (subscription_error) and
    # {"code":4009,"message":"..."} (pusher:error with a channel).
    if isinstance(data, dict):
        status = data.get("status")
        text = data.get("error", data.get("message"))
        kind = data.get("type")
        if not isinstance(text, str):
            text = kind if isinstance(kind, str) else "subscription refused"
        elif isinstance(kind, str) and kind not in text:
            text = f"{kind}: {text}"
        return SubscriptionFailed(channel, text, status if type(status) is int else None)
    if isinstance(data, str) and data:
        return SubscriptionFailed(channel, data, None)
    return SubscriptionFailed(channel, "subscription refused", None)
