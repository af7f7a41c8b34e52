"""The Kick simulator: a Pusher protocol 7 server, Kick's REST endpoints and a control API on one
port, built on ``websockets.asyncio.server`` (its ``process_request`` hook answers plain HTTP and
lets ``/app/{key}`` upgrade). See :mod:`kichat.sim` for the API and :mod:`kichat.sim.control`
for the HTTP control API.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
from collections import Counter
from collections.abc import Awaitable, Collection, Sequence
from types import TracebackType
from typing import Any, Final, Self
from urllib.parse import parse_qsl

from websockets.asyncio.server import Server, ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

from kichat.errors import ClientInputError
from kichat.sim import pusher, rest
from kichat.sim.channels import ChannelDirectory, SimChannel
from kichat.sim.control import ControlApi
from kichat.sim.faults import Faults, RestRule, RestStatus, check_close_code
from kichat.sim.httpio import SimConnection, connection_class, json_response
from kichat.sim.scenarios import BenchStatus, Published, Scenarios
from kichat.sim.traffic import EventFactory

log = logging.getLogger("kichat.sim")

DEFAULT_APP_KEY: Final = "32cbd69e4b950bf97679"
# Query string pusher-js 8.4 sends (wire.md §1.1); the simulator checks only ``protocol``.
PUSHER_QUERY: Final = "protocol=7&client=js&version=8.4.0&flash=false"


class KickSimulator:
    """A local stand-in for Kick (Pusher + REST) on one port. Use ``async with``, or
    :meth:`start` / :meth:`stop`. Counters are plain attributes, read them any time."""

    def __init__(  # noqa: PLR0917 (the positional signature is the documented API)
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        app_key: str = DEFAULT_APP_KEY,
        activity_timeout: float = 120.0,
        pong_timeout: float = 30.0,
        seed: int | None = None,
        *,
        app_secret: str = "kichat-sim-secret",
        duplicate_on_legacy_alias: bool | float = False,
        history_size: int = 50,
        close_timeout: float = 2.0,
    ) -> None:
        if activity_timeout <= 0 or pong_timeout <= 0:
            raise ClientInputError("bad_timeout", "activity_timeout and pong_timeout must be > 0")
        self.host = host
        self.app_key = app_key
        self.app_secret = app_secret
        self.activity_timeout = float(activity_timeout)
        self.pong_timeout = float(pong_timeout)
        self.close_timeout = close_timeout
        self.duplicate_on_legacy_alias: bool | float = duplicate_on_legacy_alias
        self.rng = random.Random(seed)
        self.factory = EventFactory(self.rng)
        self.channels = ChannelDirectory()
        self.history = rest.ChatHistory(history_size)
        self.faults = Faults()
        # Counters (read by tests, the control API and whoever exports metrics).
        self.rest_requests: Counter[str] = Counter()
        self.connections_opened = 0  # connections that got pusher:connection_established
        self.connections_refused = 0  # closed at connect: bad key/protocol or refuse_connections()
        self.events_published = 0
        self.frames_sent = 0  # event frames written (one per recipient)
        self.pings_sent = 0  # pusher:ping to idle clients
        self.pongs_sent = 0  # pusher:pong answers to client pings
        self._port = port
        self._clients: dict[SimConnection, pusher.PusherSession] = {}
        self._subs: dict[str, set[SimConnection]] = {}
        self._raw: set[SimConnection] = set()  # every TCP connection, handshake done or not
        self._ignoring_pings = False
        self._freeze_new = False
        self._thawed = asyncio.Event()
        self._thawed.set()
        self._socket_seq = itertools.count(1)
        self._server: Server | None = None
        self._control = ControlApi(self)
        self.scenarios = Scenarios(
            self.channels, self.history, self.factory, self._publish_encoded, self._duplicate
        )

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen. After :meth:`stop`, ``start()`` listens again on the same port (a Kick outage
        and recovery, as clients see it); counters and channels are kept."""
        if self._server is not None:
            raise RuntimeError("the simulator is already started")
        self._server = await serve(
            self._handler,
            self.host,
            self._port,
            process_request=self._process_request,
            create_connection=connection_class(self._raw),
            compression=None,
            ping_interval=None,  # the simulator speaks Pusher's heartbeat, not WebSocket pings
            open_timeout=None,  # REST "hang" must outlive any client timeout
            close_timeout=self.close_timeout,
            server_header="kichat-sim",
            logger=_QuietLogger(logging.getLogger("kichat.sim.websockets"), {}),
        )
        self._port = self._server.sockets[0].getsockname()[1]
        # The one line tools (the bench runner, the demo) can look for.
        log.info("kick simulator ready: pusher_url=%s api_url=%s", self.pusher_url, self.api_url)

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        await self.scenarios.close()
        server.close()  # refuses new connections, closes open ones with 1001
        for conn in list(self._raw):
            # Handshakes in progress (REST hangs and delays) and frozen connections never end
            # on their own: cut them.
            if conn.protocol.state is not State.OPEN or conn.frozen:
                conn.transport.abort()
        self._ignoring_pings = self._freeze_new = False
        self._thawed.set()  # handlers waiting for a thaw see their connection closed instead
        await server.wait_closed()
        log.info("kick simulator stopped")

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        if self._server is None and self._port == 0:
            raise RuntimeError("the simulator is not started")
        return self._port

    @property
    def pusher_url(self) -> str:
        return f"ws://{self._url_host}:{self.port}/app/{self.app_key}?{PUSHER_QUERY}"

    @property
    def api_url(self) -> str:
        return f"http://{self._url_host}:{self.port}"

    @property
    def _url_host(self) -> str:
        if self.host in ("", "0.0.0.0"):
            return "127.0.0.1"
        return f"[{self.host}]" if ":" in self.host else self.host

    # -- channels and stats ----------------------------------------------------------------------

    def add_channel(
        self,
        slug: str,
        channel_id: int | None = None,
        chatroom_id: int | None = None,
        live: bool = False,
    ) -> SimChannel:
        ch = self.channels.add(self.channels.create(slug, channel_id, chatroom_id))
        if live:
            ch.livestream = self.factory.livestream(ch)
        return ch

    def channel(self, slug: str) -> SimChannel:
        return self.channels.get(slug)

    def subscribers(self, channel: str) -> int:
        return len(self._subs.get(channel, ()))

    @property
    def connection_count(self) -> int:
        return len(self._clients)

    def stats(self) -> dict[str, Any]:
        return {
            "connections": self.connection_count,
            "connections_opened": self.connections_opened,
            "subscriptions": {name: len(conns) for name, conns in self._subs.items()},
            "rest_requests": dict(self.rest_requests),
            "connections_refused": self.connections_refused,
            "events_published": self.events_published,
            "frames_sent": self.frames_sent,
            "pings_sent": self.pings_sent,
            "pongs_sent": self.pongs_sent,
            "ignore_pings": self._ignoring_pings,
        }

    # -- publishing ------------------------------------------------------------------------------

    async def publish(self, channel: str, event: str, data: Any) -> int:
        """Send ``data`` (any JSON value, double-encoded like Kick) to every subscriber of
        ``channel``. Returns the number of recipients. Refuses data over Pusher's 10 KB."""
        if not channel or not event:
            raise ClientInputError("bad_publish", "channel and event must be non-empty strings")
        return self._publish_encoded(channel, event, pusher.encode_data(data))

    def _publish_encoded(self, channel: str, event: str, data_json: bytes) -> int:
        # The hot path: one encode, one frame, the same bytes written to every subscriber.
        self.events_published += 1
        self.history.on_publish(channel, event, data_json)
        conns = self._subs.get(channel)
        if not conns:
            return 0
        targets: Collection[SimConnection] = conns
        if self._ignoring_pings:
            targets = [c for c in conns if not c.frozen]
        frame = pusher.event_frame(event, channel, data_json)
        broadcast(targets, frame, text=True)
        sent = len(targets)
        self.frames_sent += sent
        if log.isEnabledFor(logging.DEBUG):
            log.debug("published %s on %s to %d", event, channel, sent)
        return sent

    def _duplicate(self) -> bool:
        p = self.duplicate_on_legacy_alias
        if isinstance(p, bool):
            return p
        return p > 0 and self.rng.random() < p

    # -- generated events and traffic (see kichat.sim.scenarios) ---------------------------------

    async def publish_event(self, event_name: str, slug: str) -> Any:
        """Publish a generated payload of ``event_name`` for channel ``slug`` on the Pusher
        channel Kick uses for it; return the payload (a dict, or a list for ``[]`` events)."""
        return (await self.scenarios.publish_generated(event_name, slug)).data

    async def publish_generated(self, event_name: str, slug: str) -> Published:
        """:meth:`publish_event`, returning the channel and recipient count too."""
        return await self.scenarios.publish_generated(event_name, slug)

    async def run_script(
        self, slug: str, events: Sequence[str] | None = None, interval: float = 0.0
    ) -> list[Published]:
        """Every event type once in a fixed order (or just ``events``), ``interval`` s apart."""
        return await self.scenarios.run_script(slug, events, interval)

    def start_traffic(
        self, rate: float, slugs: Sequence[str] | None = None, mix: str = "realistic"
    ) -> None:
        """Random events at ``rate``/s on each channel (default: every known channel) until
        :meth:`stop_traffic`. ``mix``: "realistic" (wire.md §3.29, ~97 % chat), "chat" or
        "uniform"."""
        self.scenarios.start_traffic(rate, slugs, mix)

    async def stop_traffic(self) -> None:
        await self.scenarios.stop_traffic()

    @property
    def traffic_running(self) -> bool:
        return self.scenarios.traffic_running

    async def run_bench(
        self, chatroom_ids: Sequence[int], rate: float, duration: float
    ) -> dict[int, int]:
        """ChatMessageEvents on ``chatrooms.{id}.v2`` for each id at ``rate``/s for ``duration`` s,
        content ``"<seq> <time.time_ns()>"``, seq per chatroom from 1, spread evenly over each
        period on absolute deadlines. Returns how many were published per chatroom."""
        return await self.scenarios.run_bench(chatroom_ids, rate, duration)

    def start_bench(self, chatroom_ids: Sequence[int], rate: float, duration: float) -> None:
        """:meth:`run_bench` in the background; :attr:`bench` shows its progress (409 in the
        control API if one is running)."""
        self.scenarios.start_bench(chatroom_ids, rate, duration)

    async def stop_bench(self) -> bool:
        return await self.scenarios.stop_bench()

    @property
    def bench(self) -> BenchStatus:
        return self.scenarios.bench

    # -- faults ----------------------------------------------------------------------------------

    def _targets(self, channel: str | None) -> list[SimConnection]:
        if channel is None:
            return list(self._clients)
        return list(self._subs.get(channel, ()))

    async def close_connections(
        self, code: int, message: str | None = None, *, channel: str | None = None
    ) -> int:
        """Close every connection (or those subscribed to ``channel``) with ``code``; 4xxx codes
        get a ``pusher:error {code, message}`` first, as Pusher does. Returns how many."""
        check_close_code(code)
        text = message if message is not None else pusher.close_message(code)
        conns = self._targets(channel)
        log.info("fault: closing %d connection(s) with %d", len(conns), code)
        await asyncio.gather(
            *(self._close(c, code, text, error=4000 <= code < 5000) for c in conns)
        )
        return len(conns)

    async def drop_connections(self, *, channel: str | None = None) -> int:
        """Abort the TCP connections (no close frame: the client sees 1006). Returns how many."""
        conns = self._targets(channel)
        log.info("fault: dropping %d connection(s)", len(conns))
        for conn in conns:
            conn.transport.abort()
        await asyncio.gather(*(c.wait_closed() for c in conns))
        return len(conns)

    def ignore_pings(self, enabled: bool, *, new_connections: bool = False) -> None:
        """Hang: the connections open now stop answering (``pusher:ping`` and WebSocket pings)
        and stop sending anything, but are still read, so a client that gives up is noticed.
        With ``new_connections=True``, later connections hang too, right after the WebSocket
        handshake (before ``connection_established``). ``False`` resumes every one of them."""
        self._ignoring_pings = enabled
        self._freeze_new = enabled and new_connections
        now = asyncio.get_running_loop().time()
        for conn, session in self._clients.items():
            if enabled:
                conn.freeze()
            else:
                conn.thaw()
                session.resume(now)
        if enabled:
            self._thawed.clear()
        else:
            self._thawed.set()
        log.info(
            "fault: ignore_pings %s%s",
            enabled,
            " (new connections too)" if self._freeze_new else "",
        )

    def fail_subscriptions(
        self, pattern: str, mode: str = "error", count: int | None = None
    ) -> None:
        """Subscribes to channels matching ``pattern`` (a glob) get ``pusher:subscription_error``
        ("error") or no answer at all ("swallow"), for the next ``count`` attempts (None: until
        cleared)."""
        self.faults.add_subscribe(pattern, mode, count)
        log.info("fault: subscriptions to %s -> %s (count %s)", pattern, mode, count)

    def fail_rest(
        self,
        slug_or_star: str,
        status: RestStatus = 403,
        count: int | None = None,
        delay: float = 0.0,
    ) -> None:
        """Fault REST requests for a slug (its channel endpoint and its channel id's history), a
        numeric channel id, or ``"*"``, for the next ``count`` requests (None: until cleared).

        ``status``: 403 (Kick's edge body), 404, 500 or another 4xx/5xx; ``"delay"`` answers
        normally after ``delay`` s; ``"hang"`` never answers until the client gives up.
        ``delay`` > 0 also delays the error statuses."""
        self.faults.add_rest(slug_or_star, status, count, delay)
        log.info("fault: rest %s -> %s (count %s, delay %s)", slug_or_star, status, count, delay)

    def refuse_connections(self, count: int, code: int = 4100) -> None:
        """The next ``count`` connections get ``pusher:error`` + close with ``code`` at once."""
        self.faults.set_refusals(count, code)
        log.info("fault: refusing the next %d connection(s) with %d", count, code)

    def clear_faults(self) -> None:
        """Remove every injected fault, and stop ignoring pings."""
        self.faults.clear()
        if self._ignoring_pings:
            self.ignore_pings(False)
        log.info("fault: all cleared")

    # -- Pusher connections ----------------------------------------------------------------------

    async def _handler(self, ws: ServerConnection) -> None:
        conn = _sim_conn(ws)
        assert conn.request is not None
        path, _, query = conn.request.path.partition("?")
        refusal = pusher.check_connect(
            path.removeprefix("/app/"), dict(parse_qsl(query)), self.app_key
        )
        if refusal is None and (code := self.faults.take_refusal()) is not None:
            refusal = code, pusher.close_message(code)
        if refusal is not None:
            self.connections_refused += 1
            log.info("pusher connection refused: %d %s", *refusal)
            await self._close(conn, refusal[0], refusal[1], error=True)
            return
        if self._freeze_new:
            conn.freeze()
            await _first(self._thawed.wait(), conn.wait_closed())
            if conn.protocol.state is not State.OPEN:
                return
            conn.thaw()
        await self._serve_client(conn)

    async def _serve_client(self, conn: SimConnection) -> None:
        loop = asyncio.get_running_loop()
        socket_id = f"{self.rng.randint(100_000, 999_999_999)}.{next(self._socket_seq)}"
        session = pusher.PusherSession(
            socket_id, self.activity_timeout, self.pong_timeout, loop.time()
        )
        self._clients[conn] = session
        self.connections_opened += 1
        log.info("pusher connection %s opened (%d open)", socket_id, len(self._clients))
        _send(conn, session.handshake())
        heartbeat = loop.create_task(self._heartbeat(conn, session))
        try:
            async for message in conn:
                if conn.frozen:  # frames that arrived just before the freeze wait for the thaw
                    await self._thawed.wait()
                self._on_frame(conn, session, message, loop.time())
        except ConnectionClosed:
            pass
        finally:
            heartbeat.cancel()
            del self._clients[conn]
            for channel in session.channels:
                self._unsubscribe(conn, channel)
            log.info("pusher connection %s closed (%s)", socket_id, _close_info(conn))

    def _on_frame(
        self, conn: SimConnection, session: pusher.PusherSession, message: str | bytes, now: float
    ) -> None:
        result = session.receive(message, now)
        if isinstance(result, pusher.Reply):
            if result.frame == pusher.PONG_FRAME:
                self.pongs_sent += 1
            _send(conn, result.frame)
        elif isinstance(result, pusher.Subscribe):
            self._subscribe(conn, session, result)
        elif isinstance(result, pusher.Unsubscribe):
            self._unsubscribe(conn, result.channel)
        elif log.isEnabledFor(logging.DEBUG):
            log.debug("socket %s: %s", session.socket_id, result.event)

    def _subscribe(
        self, conn: SimConnection, session: pusher.PusherSession, sub: pusher.Subscribe
    ) -> None:
        mode = self.faults.take_subscribe(sub.channel)
        if mode == "swallow":
            log.info("fault: swallowed subscribe to %s", sub.channel)
            return
        if mode == "error":
            frame = session.refuse(sub, "Subscription refused (simulated fault)")
        elif pusher.needs_auth(sub.channel) and sub.auth != pusher.channel_auth(
            self.app_key, self.app_secret, session.socket_id, sub.channel, sub.channel_data
        ):
            frame = session.refuse(sub, f"Invalid signature for channel {sub.channel}")
        else:
            self._subs.setdefault(sub.channel, set()).add(conn)
            _send(conn, session.confirm(sub))
            return
        self._unsubscribe(conn, sub.channel)
        _send(conn, frame)

    def _unsubscribe(self, conn: SimConnection, channel: str) -> None:
        conns = self._subs.get(channel)
        if conns is not None:
            conns.discard(conn)
            if not conns:
                del self._subs[channel]

    async def _heartbeat(self, conn: SimConnection, session: pusher.PusherSession) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(max(0.0, session.deadline() - loop.time()))
            if conn.frozen:
                await self._thawed.wait()  # ignore_pings(False) restarts the session's clock
                continue
            action = session.on_timer(loop.time())
            if isinstance(action, pusher.SendPing):
                self.pings_sent += 1
                _send(conn, action.frame)
            elif isinstance(action, pusher.CloseFor):
                log.info("pusher connection %s: no pong, closing 4201", session.socket_id)
                await self._close(conn, action.code, action.message, error=True)
                return

    async def _close(self, conn: SimConnection, code: int, message: str, *, error: bool) -> None:
        if error:
            _send(conn, pusher.error_frame(code, message))
        reason = message.encode()[:123].decode(errors="ignore")
        await conn.close(code, reason)

    # -- plain HTTP: REST and control ------------------------------------------------------------

    async def _process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        conn = _sim_conn(ws)
        path, _, query = request.path.partition("?")
        if path.startswith("/app/"):
            return None  # websockets upgrades it (or answers 426 to plain HTTP)
        if path == "/_sim" or path.startswith("/_sim/"):
            return await self._control.handle(request.method, path, query, conn.body)
        return await self._rest(conn, request.method, path)

    async def _rest(self, conn: SimConnection, method: str, path: str) -> Response:
        self.rest_requests[path] += 1
        if method != "GET":
            return json_response(405, {"message": f"The {method} method is not supported."})
        target = rest.route(path)
        if target is None:
            return json_response(404, {"message": "Not Found"})
        kind, key = target
        rule = self.faults.take_rest(self._rest_targets(kind, key))
        if rule is not None:
            faulted = await self._rest_fault(conn, rule)
            if faulted is not None:
                return faulted
        if kind == "channel":
            ch = self.channels.find(key)
            if ch is None:
                return json_response(404, rest.not_found_body())
            return json_response(200, rest.channel_body(ch))
        ch = self.channels.by_channel_id(int(key))
        if ch is None:
            return json_response(404, rest.messages_not_found_body())
        return json_response(200, self.history.messages_body(ch.chatroom_id))

    def _rest_targets(self, kind: str, key: str) -> set[str]:
        if kind == "channel":
            return {key}
        ch = self.channels.by_channel_id(int(key))
        return {key} if ch is None else {key, ch.slug}

    async def _rest_fault(self, conn: SimConnection, rule: RestRule) -> Response | None:
        if rule.delay > 0 and await _first(asyncio.sleep(rule.delay), conn.wait_closed()) == 1:
            return json_response(503, {"message": "client went away"})
        if rule.status == "delay":
            return None
        if rule.status == "hang":
            await conn.wait_closed()  # the client gives up, or stop() cuts the connection
            return json_response(503, {"message": "client went away"})
        status = rule.status
        if status == 403:
            return json_response(403, rest.blocked_body(self.factory.hex8()))
        if status == 404:
            return json_response(404, rest.not_found_body())
        if status >= 500:
            return json_response(status, rest.server_error_body())
        return json_response(status, {"message": "Request refused (simulated fault)"})


class _QuietLogger(logging.LoggerAdapter[logging.Logger]):
    """websockets logs every HTTP request and connection at INFO; per-request lines belong at
    DEBUG here (the simulator logs its own lifecycle lines)."""

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        super().log(logging.DEBUG if level == logging.INFO else level, msg, *args, **kwargs)


# -- helpers ------------------------------------------------------------------------------------


def _sim_conn(ws: ServerConnection) -> SimConnection:
    assert isinstance(ws, SimConnection)
    return ws


def _send(conn: SimConnection, frame: str) -> None:
    # broadcast() writes synchronously and skips connections that are not open.
    broadcast((conn,), frame)


def _close_info(conn: SimConnection) -> str:
    rcvd, sent = conn.protocol.close_rcvd, conn.protocol.close_sent
    if sent is not None:
        return f"sent {sent.code}"
    if rcvd is not None:
        return f"received {rcvd.code}"
    return "no close frame"


async def _first(*aws: Awaitable[Any]) -> int:
    """Wait for the first of ``aws`` to finish, cancel the others; return its index."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        return next(i for i, t in enumerate(tasks) if t in done)
    finally:
        for t in tasks:
            t.cancel()
