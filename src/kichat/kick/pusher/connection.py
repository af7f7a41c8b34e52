"""One upstream Pusher WebSocket, kept alive: connect, replay subscriptions, reconnect.

:class:`PusherConnection` drives a :class:`~kichat.kick.pusher.protocol.PusherClientProtocol`
over ``websockets.asyncio.client``. It owns the set of channels it should be subscribed to and
replays all of them after every reconnect (Pusher remembers nothing). Per socket it runs one
reader (the connection's task), one writer task, and one loop timer for keepalive and
subscription deadlines.

Transport choices:

* ``ping_interval=None``: liveness is checked with Pusher's own ``pusher:ping`` (after
  ``activity_timeout`` of silence, ``pong_timeout`` to answer). That one mechanism detects a dead
  TCP path and a hung server alike (a hung Pusher process whose kernel still answers WebSocket
  pings would fool a WebSocket-level check), and it is the traffic Pusher itself expects.
* ``compression="deflate"`` (websockets' default) is only offered: it is used if the server
  agrees. Chat frames are repetitive JSON and shrink several times; inflating a frame of a few
  hundred bytes costs far less than parsing it, and there are only a handful of upstream sockets.
* ``max_size`` 1 MiB: Pusher caps an event at 10 KB, so anything near 1 MiB is garbage.
* ``close_timeout`` 2 s: on shutdown a slow or dead server must not hold us for long.
* ``proxy``: exactly what the caller passes; ``None`` means a direct connection (environment
  proxy variables are not consulted implicitly).

When no connection can be had (Kick unreachable, refusing, or answering with anything but a
Pusher handshake), a new subscribe waits at most ``connect_wait`` seconds counted from when the
connection went down, then fails with :class:`PusherUnavailable` naming the cause: a client
hears within seconds, not after the whole subscribe budget. Failed attempts are reported to an
:class:`~kichat.kick.pusher.outage.OutageLog`, which decides what deserves a WARNING.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidURI, WebSocketException
from websockets.uri import parse_uri

from kichat import __version__
from kichat.errors import (
    ConfigError,
    PusherFatalError,
    PusherProtocolError,
    PusherUnavailable,
    SubscriptionError,
)
from kichat.kick.pusher.backoff import Backoff, ReconnectPolicy
from kichat.kick.pusher.outage import OutageLog, Report, describe_connect_error, describe_failure
from kichat.kick.pusher.protocol import (
    ChannelEvent,
    CloseAction,
    ConnectionEstablished,
    ConnectionStale,
    ProtocolState,
    PusherClientProtocol,
    PusherErrorReceived,
    PusherEvent,
    SubscriptionFailed,
    SubscriptionSucceeded,
    classify_close,
)

__all__ = ["DEFAULT_USER_AGENT", "ConnectionState", "ConnectionStatus", "PusherConnection"]

log = logging.getLogger("kichat.kick.pusher")

DEFAULT_USER_AGENT: Final = f"kichat/{__version__}"
MAX_FRAME_SIZE: Final = 2**20

ConnectionState = Literal["connecting", "connected", "backoff", "fatal", "closed"]
EventCallback = Callable[[str, str, object], None]

# Log the first few occurrences of a repeating problem at WARNING, then only every N-th.
_LOUD_FIRST: Final = 10
_LOUD_EVERY: Final = 1000


def _loud(count: int) -> bool:
    return count <= _LOUD_FIRST or count % _LOUD_EVERY == 0


@dataclass(frozen=True, slots=True)
class ConnectionStatus:
    """A snapshot for health and metrics. Counters only grow.

    ``reconnects_by_code`` is keyed by the close code as a string (``"4200"``, ``"1006"``), or
    ``"connect_error"`` when no WebSocket could be opened, or ``"stale"`` when we dropped a
    connection that stopped answering.
    """

    id: int
    state: ConnectionState
    socket_id: str | None
    channels: int
    last_close_code: int | None
    last_close_reason: str
    reconnects_by_code: Mapping[str, int]
    connect_attempts: int
    events_received: int
    malformed_frames: int
    callback_errors: int
    connected_since: float | None  # wall-clock (time.time()) of the current connection
    fatal_error: str | None


# A channel that used to work and is refused (or ignored) after a reconnect stays desired: its
# room hears nothing until it is back, so it is tried again, the delay doubling up to this.
_REPLAY_RETRY_MAX = 60.0


class _Subscription:
    """One desired channel. ``future`` is set until the first acknowledgement."""

    __slots__ = ("acked", "attempts", "cap", "future", "replay_failures", "send_deadline")

    def __init__(self, future: asyncio.Future[None] | None, cap: float | None) -> None:
        self.future = future
        self.cap = cap  # give up (fail the future) at this loop time
        self.acked = False
        self.attempts = 0  # subscribes sent on the current socket
        self.send_deadline: float | None = None  # re-send if no ack by then
        self.replay_failures = 0  # refused or unanswered replays since the last ack


def _retrieve(future: asyncio.Future[None]) -> None:
    # Waiters hold the future through shield(); if every waiter was cancelled nobody reads the
    # exception, and asyncio would log "exception was never retrieved".
    if not future.cancelled():
        future.exception()


class PusherConnection:
    """One upstream WebSocket to Pusher with its subscriptions. See the module docstring.

    ``subscribe()`` resolves on ``subscription_succeeded`` and raises
    :class:`SubscriptionError` on ``subscription_error`` or when no acknowledgement came within
    ``subscribe_timeout`` after each of ``1 + subscribe_retries`` sends; it resolves or fails
    within ``subscribe_timeout * (1 + subscribe_retries)`` in every case, and with
    :class:`PusherUnavailable` once the connection has been down for ``connect_wait`` seconds.
    A subscribe in flight when the socket drops is re-sent after the reconnect.
    """

    def __init__(
        self,
        url: str,
        *,
        on_event: EventCallback,
        conn_id: int = 0,
        activity_timeout: float = 120.0,
        pong_timeout: float = 30.0,
        subscribe_timeout: float = 10.0,
        subscribe_retries: int = 2,
        connect_wait: float = 5.0,
        backoff: Backoff | None = None,
        fatal_retry_interval: float = 300.0,
        healthy_after: float = 10.0,
        open_timeout: float = 10.0,
        close_timeout: float = 2.0,
        extra_headers: Mapping[str, str] | None = None,
        proxy: str | None = None,
        user_agent: str = DEFAULT_USER_AGENT,
        on_channel_dropped: Callable[[str], None] | None = None,
        outage: OutageLog | None = None,
    ) -> None:
        try:
            uri = parse_uri(url)
        except InvalidURI as exc:
            raise ConfigError([f"invalid Pusher URL {url!r}: {exc}"]) from exc
        self.id = conn_id
        self._url = url
        self._where = f"{uri.host}:{uri.port}"  # for messages: the URL's query may hold secrets
        self._on_event = on_event
        self._on_channel_dropped = on_channel_dropped
        self._activity_timeout = activity_timeout
        self._pong_timeout = pong_timeout
        self._handshake_timeout = open_timeout
        self._subscribe_timeout = subscribe_timeout
        self._subscribe_retries = subscribe_retries
        self._connect_wait = connect_wait
        self._outage = outage if outage is not None else OutageLog()
        self._policy = ReconnectPolicy(
            dataclasses.replace(backoff) if backoff is not None else Backoff(),
            healthy_after=healthy_after,
            fatal_retry_interval=fatal_retry_interval,
        )
        self._connect_kwargs: dict[str, Any] = {
            "additional_headers": dict(extra_headers or {}),
            "user_agent_header": user_agent,
            "proxy": proxy or None,  # "" (an unset config value) means no proxy too
            "open_timeout": open_timeout,
            "close_timeout": close_timeout,
            "ping_interval": None,
            "max_size": MAX_FRAME_SIZE,
            "compression": "deflate",
        }
        self._subs: dict[str, _Subscription] = {}
        self._proto: PusherClientProtocol | None = None
        self._ws: ClientConnection | None = None
        self._wake_writer: asyncio.Event | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fatal: tuple[int, str] | None = None
        self._stale_reason: str | None = None
        self._last_error: tuple[int, str] | None = None  # last 4xxx pusher:error on this socket
        self._closed = False
        # Loop time since when no connection is up (None while connected), and why the last
        # attempt failed: what a subscribe that cannot be placed is told.
        self._down_since: float | None = None
        self._last_cause: str | None = None
        self._established_once = False  # the current attempt got connection_established
        # Health and metrics.
        self.state: ConnectionState = "connecting"
        self.socket_id: str | None = None
        self.last_close_code: int | None = None
        self.last_close_reason = ""
        self.reconnects_by_code: dict[str, int] = {}
        self.connect_attempts = 0
        self.events_received = 0
        self.malformed_frames = 0
        self.callback_errors = 0
        self.connected_since: float | None = None

    # -- public API ----------------------------------------------------------------------------

    @property
    def channels(self) -> frozenset[str]:
        """Desired channels (acknowledged or not)."""
        return frozenset(self._subs)

    @property
    def channel_count(self) -> int:
        return len(self._subs)

    @property
    def fatal_error(self) -> PusherFatalError | None:
        return PusherFatalError(*self._fatal) if self._fatal is not None else None

    def has_channel(self, channel: str) -> bool:
        return channel in self._subs

    def start(self) -> None:
        """Start connecting in the background. Call from a running event loop."""
        if self._task is not None or self._closed:
            return
        self._loop = asyncio.get_running_loop()
        self._down_since = self._loop.time()
        self._task = self._loop.create_task(self._run(), name=f"kichat-pusher-{self.id}")

    async def subscribe(self, channel: str) -> None:
        """Subscribe (idempotent); return once Pusher acknowledged it. See the class docstring."""
        if self._closed or self._loop is None:
            raise PusherUnavailable("the Pusher connection is not running")
        sub = self._subs.get(channel)
        if sub is None:
            if self._fatal is not None:
                raise PusherFatalError(*self._fatal)
            sub = self._add(channel)
        if sub.future is None:
            return  # acknowledged once already: it stays desired and is replayed on reconnects
        await asyncio.shield(sub.future)

    def unsubscribe(self, channel: str) -> None:
        """Forget ``channel`` and tell Pusher (idempotent). A pending subscribe fails."""
        sub = self._subs.pop(channel, None)
        if sub is None:
            return
        self._fail(sub, SubscriptionError(channel, "unsubscribed before it was acknowledged"))
        if self._proto is not None:
            self._proto.unsubscribe(channel)
            self._flush()

    def status(self) -> ConnectionStatus:
        return ConnectionStatus(
            id=self.id,
            state=self.state,
            socket_id=self.socket_id,
            channels=len(self._subs),
            last_close_code=self.last_close_code,
            last_close_reason=self.last_close_reason,
            reconnects_by_code=dict(self.reconnects_by_code),
            connect_attempts=self.connect_attempts,
            events_received=self.events_received,
            malformed_frames=self.malformed_frames,
            callback_errors=self.callback_errors,
            connected_since=self.connected_since,
            fatal_error=str(self.fatal_error) if self._fatal is not None else None,
        )

    async def close(self) -> None:
        """Close the WebSocket (code 1000) and stop; pending subscribes fail. Idempotent."""
        if not self._closed:
            self._closed = True
            self.state = "closed"
            log.info("pusher[%d] closing", self.id)
            self._cancel_timer()
            self._outage.forget(self.id)
            for channel, sub in self._subs.items():
                self._fail(sub, PusherUnavailable(f"closed before {channel!r} was acked"))
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task])
        self.socket_id = None
        self.connected_since = None

    # -- subscriptions -------------------------------------------------------------------------

    def _add(self, channel: str) -> _Subscription:
        assert self._loop is not None
        now = self._loop.time()
        future: asyncio.Future[None] = self._loop.create_future()
        future.add_done_callback(_retrieve)
        budget = self._subscribe_timeout * (1 + self._subscribe_retries)
        sub = self._subs[channel] = _Subscription(future, now + budget)
        proto = self._proto
        if proto is not None:
            proto.subscribe(channel)  # deferred by the protocol until connection_established
            if proto.state is ProtocolState.CONNECTED:
                self._sent(sub, now)
                self._flush()
        self._arm_timer()
        return sub

    def _sent(self, sub: _Subscription, now: float) -> None:
        sub.attempts += 1
        sub.send_deadline = now + self._subscribe_timeout

    def _fail(self, sub: _Subscription, exc: Exception) -> None:
        future, sub.future = sub.future, None
        if future is not None and not future.done():
            future.set_exception(exc)

    def _drop(self, channel: str, exc: Exception) -> None:
        """Give up on a channel whose first subscribe failed."""
        sub = self._subs.pop(channel)
        self._fail(sub, exc)
        if self._on_channel_dropped is not None:
            self._on_channel_dropped(channel)

    def _retry_replay_later(self, sub: _Subscription, now: float) -> None:
        sub.replay_failures += 1
        sub.attempts = 0
        delay = min(_REPLAY_RETRY_MAX, self._subscribe_timeout * 2 ** (sub.replay_failures - 1))
        sub.send_deadline = now + delay

    def _connected(self) -> bool:
        proto = self._proto
        return proto is not None and proto.state is ProtocolState.CONNECTED

    def _unavailable_deadline(self) -> float | None:
        """When subscribes waiting for a connection give up (None: a connection is up)."""
        if self._down_since is None or self._connected():
            return None
        return self._down_since + self._connect_wait

    def _unavailable(self, now: float) -> PusherUnavailable:
        cause = self._last_cause or f"still connecting to {self._where}, no answer yet"
        down = now - self._down_since if self._down_since is not None else self._connect_wait
        return PusherUnavailable(f"no connection to Kick's Pusher for {down:.1f} s ({cause})")

    def _check_subscriptions(self, now: float) -> None:
        proto = self._proto
        connected = self._connected()
        give_up = self._unavailable_deadline()
        for channel, sub in list(self._subs.items()):
            if sub.acked:
                continue
            if sub.future is not None and give_up is not None and now >= give_up:
                self._drop(channel, self._unavailable(now))
            elif sub.cap is not None and now >= sub.cap:
                if connected:
                    assert proto is not None
                    proto.unsubscribe(channel)  # in case the ack is merely late
                    self._drop(
                        channel,
                        SubscriptionError(channel, f"not acknowledged after {sub.attempts} tries"),
                    )
                else:
                    self._drop(channel, PusherUnavailable("no upstream Pusher connection"))
            elif connected and sub.send_deadline is not None and now >= sub.send_deadline:
                assert proto is not None
                if sub.attempts > self._subscribe_retries:
                    log.error("pusher[%d] %r: re-subscribe never acknowledged", self.id, channel)
                    self._retry_replay_later(sub, now)
                    continue
                log.info("pusher[%d] %r: no ack, re-sending subscribe", self.id, channel)
                proto.subscribe(channel)
                self._sent(sub, now)
        self._flush()

    # -- timer ---------------------------------------------------------------------------------

    def _next_deadline(self) -> float | None:
        proto = self._proto
        deadline = proto.next_deadline() if proto is not None else None
        give_up = self._unavailable_deadline()
        for sub in self._subs.values():
            if sub.acked:
                continue
            waiting = give_up if sub.future is not None else None
            for candidate in (sub.cap, sub.send_deadline, waiting):
                if candidate is not None and (deadline is None or candidate < deadline):
                    deadline = candidate
        return deadline

    def _arm_timer(self) -> None:
        if self._closed or self._loop is None:
            return
        deadline = self._next_deadline()
        timer = self._timer
        if timer is not None:
            if deadline is not None and timer.when() <= deadline:
                return  # fires early enough; it re-arms itself
            timer.cancel()
            self._timer = None
        if deadline is not None:
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        self._timer = None
        assert self._loop is not None
        now = self._loop.time()
        proto = self._proto
        if proto is not None:
            for event in proto.on_timer(now):
                self._handle(event)
        self._check_subscriptions(now)
        self._arm_timer()

    # -- the connection loop -------------------------------------------------------------------

    async def _run(self) -> None:
        assert self._loop is not None
        while not self._closed:
            self.state = "connecting"
            self.connect_attempts += 1
            self._established_once = False
            try:
                code, reason, key = await self._connect_once()
            except Exception:  # a bug must not end the reconnect loop for good
                log.exception("pusher[%d] unexpected error in the connection loop", self.id)
                code, reason, key = None, "internal error", "internal_error"
            now = self._loop.time()
            if self._down_since is None:
                self._down_since = now
            action = classify_close(code)
            delay = self._policy.next_delay(action, now)
            self.last_close_code = code
            self.last_close_reason = reason
            self.reconnects_by_code[key] = self.reconnects_by_code.get(key, 0) + 1
            if action is CloseAction.FATAL:
                assert code is not None
                self._enter_fatal(code, reason)  # logged as an error there
            else:
                self.state = "backoff"
            if action is not CloseAction.FATAL and not self._established_once:
                # No connection could be had at all: an outage, reported without flooding.
                cause = describe_failure(code, reason, key)
                self._last_cause = cause
                self._log_failure(self._outage.failed(self.id, cause, now), cause, delay)
            else:
                log.info(
                    "pusher[%d] disconnected (code=%s reason=%r action=%s); next attempt in %.2f s",
                    self.id,
                    code,
                    reason,
                    action.value,
                    delay,
                )
            self._arm_timer()  # subscription give-up deadlines keep running while down
            await asyncio.sleep(delay)

    def _log_failure(self, report: Report | None, cause: str, delay: float) -> None:
        if report is None:
            log.debug(
                "pusher[%d] cannot connect: %s; next attempt in %.2f s", self.id, cause, delay
            )
        elif report.kind == "first":
            log.warning(
                "pusher[%d] cannot connect to Kick's Pusher: %s; retrying in %.1f s "
                "(repeated failures are logged every %g s, or when the cause changes)",
                self.id,
                cause,
                delay,
                self._outage.repeat_every,
            )
        else:
            log.warning(
                "pusher[%d] still no connection to Kick's Pusher after %.0f s "
                "(%d failed attempts)%s: %s; retrying in %.1f s",
                self.id,
                report.down_for,
                report.failures,
                ", cause changed" if report.kind == "changed" else "",
                cause,
                delay,
            )

    async def _connect_once(self) -> tuple[int | None, str, str]:
        """One connection attempt and session. Returns (close code, reason, counter key)."""
        log.debug("pusher[%d] connecting to %s", self.id, self._url)
        try:
            ws = await connect(self._url, **self._connect_kwargs)
        except (OSError, TimeoutError, WebSocketException) as exc:
            cause = describe_connect_error(exc, self._where, self._handshake_timeout)
            return None, cause, "connect_error"
        try:
            await self._session(ws)
        finally:
            self._end_session()
            await ws.close()
        code, reason = ws.close_code, ws.close_reason or ""
        if self._stale_reason is not None:
            return None, self._stale_reason, "stale"
        if self._last_error is not None:
            error_code, message = self._last_error
            if code is None or not 4000 <= code <= 4999:
                # The pusher:error carried the real reason but the close frame did not (protocol
                # < 6 style, or a proxy in between): the error code decides.
                code, reason = error_code, message
            elif not reason and code == error_code:
                reason = message
        return code, reason, str(code)

    async def _session(self, ws: ClientConnection) -> None:
        assert self._loop is not None
        loop = self._loop
        proto = PusherClientProtocol(
            now=loop.time(),
            activity_timeout=self._activity_timeout,
            pong_timeout=self._pong_timeout,
            handshake_timeout=self._handshake_timeout,
        )
        self._ws, self._proto = ws, proto
        self._stale_reason = None
        self._last_error = None
        for channel in self._subs:
            proto.subscribe(channel)
        self._wake_writer = wake = asyncio.Event()
        writer = loop.create_task(self._writer(ws, proto, wake), name=f"kichat-pusher-{self.id}-w")
        self._arm_timer()
        subs = self._subs
        on_event = self._on_event
        try:
            async for message in ws:
                try:
                    events = proto.receive(message, loop.time())
                except PusherProtocolError as exc:
                    self._malformed(exc, message)
                    continue
                for event in events:
                    if type(event) is ChannelEvent:
                        self.events_received += 1
                        if event.channel in subs:
                            try:
                                on_event(event.channel, event.event, event.data)
                            except Exception:
                                self._callback_failed(event)
                    else:
                        self._handle(event)
                if proto.has_data_to_send:
                    wake.set()
        except ConnectionClosed:
            pass
        finally:
            writer.cancel()
            await asyncio.wait([writer])
            if not writer.cancelled() and writer.exception() is not None:
                log.error("pusher[%d] writer failed", self.id, exc_info=writer.exception())

    async def _writer(
        self, ws: ClientConnection, proto: PusherClientProtocol, wake: asyncio.Event
    ) -> None:
        # The only sender on this socket, so frames leave in the order the protocol queued them.
        try:
            while True:
                await wake.wait()
                wake.clear()
                for frame in proto.data_to_send():
                    await ws.send(frame)
        except ConnectionClosed:
            pass

    def _flush(self) -> None:
        wake, proto = self._wake_writer, self._proto
        if wake is not None and proto is not None and proto.has_data_to_send:
            wake.set()

    def _end_session(self) -> None:
        self._proto = None
        self._ws = None
        self._wake_writer = None
        self.socket_id = None
        self.connected_since = None
        for sub in self._subs.values():
            sub.acked = False
            sub.attempts = 0
            sub.send_deadline = None

    # -- protocol events -----------------------------------------------------------------------

    def _handle(self, event: PusherEvent) -> None:
        if isinstance(event, SubscriptionSucceeded):
            self._succeeded(event.channel)
        elif isinstance(event, SubscriptionFailed):
            self._refused(event)
        elif isinstance(event, ConnectionEstablished):
            self._established(event)
        elif isinstance(event, PusherErrorReceived):
            # 41xx/42xx are routine (capacity, "reconnect now"); the close that follows is logged.
            # Before the handshake, the close is a failed attempt: the outage log reports it
            # (with this message), so a server refusing every attempt is not a line per retry.
            routine = event.code is not None and 4100 <= event.code <= 4299
            quiet = not self._established_once
            level = logging.DEBUG if quiet else logging.INFO if routine else logging.WARNING
            log.log(level, "pusher[%d] pusher:error code=%s %r", self.id, event.code, event.message)
            if event.code is not None and 4000 <= event.code <= 4999:
                self._last_error = (event.code, event.message)
        elif isinstance(event, ConnectionStale):
            self._stale(event.reason)

    def _established(self, event: ConnectionEstablished) -> None:
        assert self._loop is not None and self._proto is not None
        now = self._loop.time()
        self._policy.connected(now)
        self._established_once = True
        self._down_since = None
        self._last_cause = None
        recovery = self._outage.connected(self.id, now)
        if recovery is not None:
            log.info(
                "pusher[%d] connection to Kick's Pusher is back after %.1f s down "
                "(%d failed attempts)",
                self.id,
                recovery.down_for,
                recovery.failures,
            )
        if self._fatal is not None:
            log.info("pusher[%d] fatal condition cleared", self.id)
            self._fatal = None
        self.state = "connected"
        self.socket_id = event.socket_id
        self.connected_since = time.time()
        # The protocol already queued a subscribe for every channel we had when the socket opened.
        for sub in self._subs.values():
            self._sent(sub, now)
        self._flush()
        self._arm_timer()
        log.info(
            "pusher[%d] connected socket_id=%s activity_timeout=%ss, subscribing %d channel(s)",
            self.id,
            event.socket_id,
            event.activity_timeout,
            len(self._subs),
        )

    def _succeeded(self, channel: str) -> None:
        sub = self._subs.get(channel)
        if sub is None or sub.acked:
            return  # unsubscribed meanwhile, or the ack of a re-sent subscribe
        sub.acked = True
        sub.send_deadline = None
        sub.cap = None
        sub.replay_failures = 0
        future, sub.future = sub.future, None
        if future is not None and not future.done():
            future.set_result(None)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("pusher[%d] subscribed %r", self.id, channel)

    def _refused(self, event: SubscriptionFailed) -> None:
        sub = self._subs.get(event.channel)
        if sub is None:
            return
        detail = event.error if event.status is None else f"{event.error} (status {event.status})"
        if sub.future is not None:
            log.info("pusher[%d] subscription to %r refused: %s", self.id, event.channel, detail)
            self._drop(event.channel, SubscriptionError(event.channel, detail))
        else:
            # A replay of a channel that used to work: keep it desired and try again later.
            log.error("pusher[%d] re-subscribe to %r refused: %s", self.id, event.channel, detail)
            assert self._loop is not None
            self._retry_replay_later(sub, self._loop.time())
            self._arm_timer()

    def _stale(self, reason: str) -> None:
        log.warning("pusher[%d] connection stale: %s; dropping it", self.id, reason)
        self._stale_reason = reason
        ws = self._ws
        if ws is not None:
            # The peer stopped answering: a closing handshake would only wait for close_timeout.
            ws.transport.abort()

    def _enter_fatal(self, code: int, reason: str) -> None:
        self.state = "fatal"
        self._fatal = (code, reason)
        log.error(
            "pusher[%d] fatal close %d %r: not reconnecting for %g s",
            self.id,
            code,
            reason,
            self._policy.fatal_retry_interval,
        )
        for channel, sub in list(self._subs.items()):
            if sub.future is not None:
                self._drop(channel, PusherFatalError(code, reason))

    def _malformed(self, exc: PusherProtocolError, message: str | bytes) -> None:
        self.malformed_frames += 1
        if _loud(self.malformed_frames):
            log.warning(
                "pusher[%d] malformed frame #%d ignored: %s: %.200r",
                self.id,
                self.malformed_frames,
                exc,
                message,
            )

    def _callback_failed(self, event: ChannelEvent) -> None:
        self.callback_errors += 1
        if _loud(self.callback_errors):
            log.exception(
                "pusher[%d] on_event failed for %s on %r (#%d)",
                self.id,
                event.event,
                event.channel,
                self.callback_errors,
            )
