"""``PusherPool``: the upstream as the relay sees it, a set of channels spread over connections.

Channels go on the first connection with room (``max_channels_per_connection``); a new
connection is opened only when all are full. A connection left without channels is closed after
``idle_close_after`` seconds, except the last one: keeping one socket warm costs nothing, makes
the first subscribe fast, and keeps a wrong key or a dead upstream visible in ``status()`` even
when nobody watches anything.

A fatal close (4000-4099, e.g. a rotated app key) concerns the app, not one socket, so it is
reported pool-wide (``status().fatal``) and new subscribes fail fast with
:class:`PusherFatalError` until a connection gets through again.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType

from kichat.errors import ConfigError, PusherFatalError, PusherUnavailable
from kichat.kick.pusher.backoff import Backoff
from kichat.kick.pusher.connection import DEFAULT_USER_AGENT, ConnectionStatus, PusherConnection
from kichat.kick.pusher.outage import OutageLog

__all__ = ["PoolStatus", "PusherPool"]

log = logging.getLogger("kichat.kick.pusher")


@dataclass(frozen=True, slots=True)
class PoolStatus:
    """Health and metrics. The totals include connections closed since the start, so they are
    monotonic counters (safe to export as Prometheus counters)."""

    connections: tuple[ConnectionStatus, ...]
    fatal: bool
    fatal_error: str | None
    channels: int
    connected: int  # connections in state "connected"
    events_received: int
    reconnects: int
    malformed_frames: int
    callback_errors: int
    reconnects_by_code: Mapping[str, int]  # summed over every connection, retired ones too


@dataclass(slots=True)
class _Retired:
    """Counters of connections already closed and removed."""

    events_received: int = 0
    reconnects: int = 0
    malformed_frames: int = 0
    callback_errors: int = 0
    reconnects_by_code: Counter[str] = field(default_factory=Counter)


class PusherPool:
    """Subscribe/unsubscribe channels on Kick's Pusher; events go to ``on_event``.

    ``on_event(channel, event, data)`` is called synchronously from the reader for every
    application event, with ``data`` exactly as received (Kick: a JSON string). It must not
    block; exceptions are logged and counted, never fatal.
    """

    def __init__(
        self,
        url: str,
        *,
        on_event: Callable[[str, str, object], None],
        max_channels_per_connection: int = 100,
        pong_timeout: float = 30.0,
        subscribe_timeout: float = 10.0,
        subscribe_retries: int = 2,
        connect_wait: float = 5.0,
        backoff: Backoff | None = None,
        fatal_retry_interval: float = 300.0,
        open_timeout: float = 10.0,
        extra_headers: Mapping[str, str] | None = None,
        proxy: str | None = None,
        activity_timeout: float = 120.0,
        idle_close_after: float = 30.0,
        healthy_after: float = 10.0,
        user_agent: str = DEFAULT_USER_AGENT,
    ) -> None:
        if max_channels_per_connection < 1:
            raise ConfigError(
                [f"max_channels_per_connection must be >= 1, got {max_channels_per_connection}"]
            )
        self._max = max_channels_per_connection
        self._idle_close_after = idle_close_after
        # One outage for the whole pool: forty connections refused alike make one warning.
        self.outage = OutageLog()
        self._connection_factory = functools.partial(
            PusherConnection,
            url,
            on_event=on_event,
            activity_timeout=activity_timeout,
            pong_timeout=pong_timeout,
            subscribe_timeout=subscribe_timeout,
            subscribe_retries=subscribe_retries,
            connect_wait=connect_wait,
            outage=self.outage,
            backoff=backoff,
            fatal_retry_interval=fatal_retry_interval,
            healthy_after=healthy_after,
            open_timeout=open_timeout,
            extra_headers=extra_headers,
            proxy=proxy,
            user_agent=user_agent,
        )
        # Build one connection now so a bad URL fails at construction, not at first use.
        self._ids = itertools.count(1)
        self._connections: list[PusherConnection] = [self._new_connection()]
        self._placement: dict[str, PusherConnection] = {}
        self._idle_timers: dict[PusherConnection, asyncio.TimerHandle] = {}
        self._closing: set[asyncio.Task[None]] = set()
        # Reaped connections still closing: out of status().connections, but their counters
        # still count in the totals until _retire takes them over (totals never go backwards).
        self._reaped: set[PusherConnection] = set()
        self._retired = _Retired()
        self._started = False
        self._closed = False

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the first connection in the background; returns at once."""
        if self._closed:
            raise PusherUnavailable("the Pusher pool is closed")
        if not self._started:
            self._started = True
            for conn in self._connections:
                conn.start()

    async def close(self) -> None:
        """Close every connection; pending and later subscribes fail with PusherUnavailable."""
        if self._closed:
            return
        self._closed = True
        for timer in self._idle_timers.values():
            timer.cancel()
        self._idle_timers.clear()
        conns, self._connections = self._connections, []
        await asyncio.gather(*(conn.close() for conn in conns))
        for conn in conns:
            self._retire(conn)
        if self._closing:
            await asyncio.wait(self._closing)
        self._placement.clear()
        log.info("pusher pool closed")

    async def __aenter__(self) -> PusherPool:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- subscriptions -------------------------------------------------------------------------

    @property
    def channels(self) -> frozenset[str]:
        """The desired channels (acknowledged or pending)."""
        return frozenset(self._placement)

    async def subscribe(self, channel: str) -> None:
        """Subscribe to ``channel``; idempotent; returns once Pusher acknowledged it.

        Concurrent calls for one channel share one upstream subscribe. Raises
        :class:`SubscriptionError` (refused or never acknowledged), :class:`PusherFatalError`
        (the app key is rejected) or :class:`PusherUnavailable` (pool closed, or no connection
        came up within the subscribe budget).
        """
        if not self._started or self._closed:
            raise PusherUnavailable("the Pusher pool is not running")
        conn = self._placement.get(channel)
        if conn is None:
            fatal = self._fatal_error()
            if fatal is not None:
                raise fatal
            conn = self._connection_with_room()
            self._placement[channel] = conn
        # No await between placement and conn.subscribe registering the channel, so a second
        # caller always finds the first one's pending subscription and shares it.
        try:
            await conn.subscribe(channel)
        except BaseException:
            if self._placement.get(channel) is conn and not conn.has_channel(channel):
                del self._placement[channel]
                self._maybe_idle(conn)
            raise

    async def unsubscribe(self, channel: str) -> None:
        """Unsubscribe (idempotent; Pusher does not acknowledge). A pending subscribe of this
        channel fails with :class:`SubscriptionError`."""
        conn = self._placement.pop(channel, None)
        if conn is None:
            return
        conn.unsubscribe(channel)
        self._maybe_idle(conn)

    # -- status --------------------------------------------------------------------------------

    def status(self) -> PoolStatus:
        statuses = tuple(conn.status() for conn in self._connections)
        counted = statuses + tuple(conn.status() for conn in self._reaped)
        fatal = self._fatal_error()
        retired = self._retired
        return PoolStatus(
            connections=statuses,
            fatal=fatal is not None,
            fatal_error=str(fatal) if fatal is not None else None,
            channels=len(self._placement),
            connected=sum(1 for s in statuses if s.state == "connected"),
            events_received=retired.events_received + sum(s.events_received for s in counted),
            reconnects=retired.reconnects
            + sum(sum(s.reconnects_by_code.values()) for s in counted),
            malformed_frames=retired.malformed_frames + sum(s.malformed_frames for s in counted),
            callback_errors=retired.callback_errors + sum(s.callback_errors for s in counted),
            reconnects_by_code=sum(
                (Counter(s.reconnects_by_code) for s in counted),
                Counter(retired.reconnects_by_code),
            ),
        )

    # -- internals -----------------------------------------------------------------------------

    def _new_connection(self) -> PusherConnection:
        conn_id = next(self._ids)
        return self._connection_factory(
            conn_id=conn_id, on_channel_dropped=lambda channel: self._dropped(conn_id, channel)
        )

    def _connection_with_room(self) -> PusherConnection:
        for conn in self._connections:
            if conn.channel_count < self._max:
                self._cancel_idle(conn)
                return conn
        conn = self._new_connection()
        self._connections.append(conn)
        conn.start()
        log.info(
            "pusher pool: all %d connection(s) full, opened connection %d",
            len(self._connections) - 1,
            conn.id,
        )
        return conn

    def refusal(self) -> str | None:
        """Why Kick refuses the app on every connection (a fatal close), or ``None``. Cheap: a
        subscribe asks before it waits for a connection."""
        fatal = self._fatal_error()
        return str(fatal) if fatal is not None else None

    def _fatal_error(self) -> PusherFatalError | None:
        for conn in self._connections:
            error = conn.fatal_error
            if error is not None:
                return error
        return None

    def _dropped(self, conn_id: int, channel: str) -> None:
        # A connection gave up on a channel by itself (refused, never acked, fatal).
        conn = self._placement.get(channel)
        if conn is not None and conn.id == conn_id:
            del self._placement[channel]
            self._maybe_idle(conn)

    def _maybe_idle(self, conn: PusherConnection) -> None:
        if conn.channel_count or conn in self._idle_timers or self._closed:
            return
        loop = asyncio.get_running_loop()
        self._idle_timers[conn] = loop.call_later(self._idle_close_after, self._reap, conn)

    def _cancel_idle(self, conn: PusherConnection) -> None:
        timer = self._idle_timers.pop(conn, None)
        if timer is not None:
            timer.cancel()

    def _reap(self, conn: PusherConnection) -> None:
        self._idle_timers.pop(conn, None)
        if conn.channel_count or len(self._connections) <= 1 or conn not in self._connections:
            return
        self._connections.remove(conn)
        self._reaped.add(conn)
        log.info("pusher pool: closing idle connection %d", conn.id)
        task = asyncio.get_running_loop().create_task(
            self._close_retired(conn), name=f"kichat-pusher-{conn.id}-reap"
        )
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _close_retired(self, conn: PusherConnection) -> None:
        try:
            await conn.close()
        finally:
            self._reaped.discard(conn)
            self._retire(conn)

    def _retire(self, conn: PusherConnection) -> None:
        status = conn.status()
        retired = self._retired
        retired.events_received += status.events_received
        retired.reconnects += sum(status.reconnects_by_code.values())
        retired.reconnects_by_code.update(status.reconnects_by_code)
        retired.malformed_frames += status.malformed_frames
        retired.callback_errors += status.callback_errors
