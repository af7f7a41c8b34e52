"""The composition root: builds every part from :class:`~kichat.config.Settings`, owns start-up
and graceful shutdown.

::

    Kick (Pusher) -> PusherPool -> Gateway.on_upstream_event -> Namespace.emit -> clients
    clients -> subscribe -> RelayService -> Registry / Gateway.acquire -> PusherPool.subscribe
    HTTP :3000 -> Frontend -> /socket.io/ (Server) | REST (RestApi) | ops (Ops) | pages (Pages)

Shutdown (a drain, all of it within ``server.shutdown_timeout``): mark not ready (``/readyz``
503) and refuse new Socket.IO sessions (503); flush what is queued to every Socket.IO client and
close its transport so that it reconnects (elsewhere, or here after a restart: sessions end,
they are not recoverable); meanwhile close the upstream pool. The listening socket stays open
until the clients are drained (a long-polling client's last GETs come on new connections, and a
load balancer's health check sees the 503); then stop accepting, let in-flight HTTP requests
and WebSocket closing handshakes finish, and close the Kick client.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import secrets
from typing import Any, Final

from prometheus_client import ProcessCollector
from prometheus_client.registry import CollectorRegistry

from kichat.broker import Broker, Lease, MemoryBroker
from kichat.config import Settings
from kichat.http import HttpServer
from kichat.kick.api import KickApi
from kichat.kick.pusher import Backoff, PusherPool
from kichat.limits import ApiKeys, parse_networks
from kichat.memtrim import MemoryTrimmer
from kichat.observability import GatewayCollector, LoopLagMonitor, WebStats
from kichat.relay import Gateway, Registry, RelayService
from kichat.relay.feeds import Feeds
from kichat.relay.registry import RoomKey
from kichat.relay.sessions import RelaySessions
from kichat.sio import Server
from kichat.web.frontend import Frontend
from kichat.web.ops import Ops
from kichat.web.pages import Pages
from kichat.web.rest import RestApi
from kichat.web.router import Router
from kichat.workers import WorkerLink, WorkerSpec

log = logging.getLogger("kichat.app")

_MIN_BODY: Final = 64 * 1024


class App:
    def __init__(self, settings: Settings) -> None:
        s = settings
        self.settings = s
        self.stopping = False
        self._bound = False
        self.kick = KickApi(
            s.kick_api.url,
            timeout=s.kick_api.timeout,
            retries=s.kick_api.retries,
            proxy=s.kick_api.proxy or None,
            headers=s.kick_api.headers,
            cache_ttl=s.kick_api.channel_cache_ttl,
            not_found_ttl=s.kick_api.not_found_ttl,
        )
        # One of the worker processes of ``kichat serve --workers N``, or None.
        self.worker = WorkerSpec.from_env()
        self.link: WorkerLink | None = None
        self._internal: asyncio.Server | None = None
        if self.worker is not None:
            self.node_id = self.worker.node_id
        else:
            self.node_id = s.cluster.node_id or secrets.token_hex(3)
        self.broker = _broker(s, self.node_id)
        self.pool = PusherPool(
            s.pusher.url,
            on_event=self._upstream_event,
            max_channels_per_connection=s.pusher.max_channels_per_connection,
            pong_timeout=s.pusher.pong_timeout,
            subscribe_timeout=s.pusher.subscribe_timeout,
            subscribe_retries=s.pusher.subscribe_retries,
            connect_wait=s.pusher.connect_wait,
            backoff=Backoff(initial=s.pusher.backoff_initial, maximum=s.pusher.backoff_max),
            fatal_retry_interval=s.pusher.fatal_retry_interval,
            extra_headers=s.pusher.headers,
            proxy=s.pusher.proxy or None,
        )
        self.sio = Server(
            ping_interval=s.socketio.ping_interval,
            ping_timeout=s.socketio.ping_timeout,
            max_payload=s.socketio.max_payload,
            connect_timeout=s.socketio.connect_timeout,
            cors_origins=s.server.cors_origins,
            recovery=s.socketio.recovery,
            recovery_window=s.socketio.recovery_window,
            recovery_buffer_bytes=s.socketio.recovery_buffer_bytes,
            outbound_buffer_limit=s.socketio.outbound_buffer_limit,
            flush_interval=s.socketio.flush_interval,
            pending_per_client=s.limits.pending_connections_per_ip,
            max_pending=s.socketio.max_pending_connections,
            detached_per_client=s.limits.detached_per_ip,
            sid_prefix=f"{self.node_id}_" if s.cluster.redis_url else "",
        )
        self.nsp = self.sio.of("/")
        self.registry = Registry()
        self.feeds = Feeds(
            self.pool,
            self.broker,
            chatroom_templates=s.relay.chatroom_channels,
            channel_templates=s.relay.channel_channels,
            dedupe_window=s.relay.dedupe_window,
            history=self.kick,
            channel_id_of=self._channel_id_of,
            backfill_window=s.cluster.backfill_window,
        )
        self.gateway = Gateway(
            self.broker,
            self.feeds,
            self.kick,
            self.nsp,
            lambda key: self.registry.count(key) > 0,
            linger=s.relay.linger,
            feed_wait=s.pusher.subscribe_timeout * (s.pusher.subscribe_retries + 1) + 5.0,
            owner_check_interval=s.cluster.owner_check_interval,
            on_stream_attached=self._stream_attached,
        )
        self.sessions = RelaySessions(
            self.broker, self.gateway, self.registry, stream_wait=s.relay.stream_lookup_wait
        )
        self.sio.store = self.sessions
        trusted = parse_networks(s.server.trusted_proxies)
        api_keys = ApiKeys(tuple(s.limits.api_keys))
        self.service = RelayService(
            self.nsp,
            self.gateway,
            self.registry,
            self.sessions,
            max_subscriptions=s.limits.subscriptions_per_client,
            subscribe_rate=s.limits.subscribe_rate,
            connections_per_ip=s.limits.connections_per_ip,
            api_keys=api_keys,
            trusted_proxies=trusted,
            upstream_refusal=self.pool.refusal,
            stream_lookup_wait=s.relay.stream_lookup_wait,
        )
        self.loop_lag = LoopLagMonitor()
        self.web_stats = WebStats()
        self.metrics = CollectorRegistry()
        self.metrics.register(GatewayCollector(self))
        ProcessCollector(registry=self.metrics)
        self.router = Router()
        self.router.mount(s.socketio.path, self.sio.handle)
        RestApi(self.kick).install(self.router)
        self.ops = Ops(self, self.metrics)
        self.ops.install(self.router)
        self.pages = Pages(s)
        self.pages.install(self.router)
        self.frontend = Frontend(
            self.router,
            rest_per_minute=s.limits.rest_per_minute,
            api_keys=api_keys,
            cors_origins=s.server.cors_origins,
            trusted_proxies=trusted,
            stats=self.web_stats,
        )
        self.http = HttpServer(
            self.frontend,
            max_body_size=max(s.socketio.max_payload + 1024, _MIN_BODY),
            send_buffer_size=s.server.socket_send_buffer or None,
        )
        self.trimmer = MemoryTrimmer(s.server.memory_trim_interval)

    # The glue points of the hot path, kept as plain methods (one call each per event).
    def _upstream_event(self, channel: str, event: str, data: object) -> None:
        self.feeds.on_upstream_event(channel, event, data)

    def _channel_id_of(self, chatroom_id: int) -> int | None:
        return self.gateway.channel_id_of(chatroom_id)

    def _stream_attached(self, key: RoomKey, topic: str, at: int) -> None:
        self.sessions.stream_attached(key, topic, at)

    def clients_snapshot(self) -> dict[str, Any]:
        """The Socket.IO server's figures, with the recovery log wherever it is kept (in one
        process, the memory broker holds it)."""
        snap = self.sio.snapshot()
        snap["recovery_log_bytes"] += self.broker.status().history_bytes
        return snap

    @property
    def port(self) -> int:
        return self.http.port

    async def start(self) -> None:
        # Bind first: a busy port then fails before anything has started (no upstream
        # connection to undo, no shutdown lines in front of the one message that matters).
        # Requests are served only once everything below has started.
        await self.http.start(
            self.settings.server.host,
            self.settings.server.port,
            start_serving=False,
            reuse_port=self.worker is not None,
        )
        self._bound = True
        await self.broker.start(_BrokerEvents(self))
        await self.pool.start()
        await self.sio.start()
        self.gateway.start()
        self.loop_lag.start()
        if self.worker is not None:
            self.link = WorkerLink(self.worker, self.http)
            await self.link.start()
            path = self.worker.http_path(self.worker.index)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # left by this worker's previous life
            self._internal = await self.http.start_unix(path)
        await self.http.serve()
        self.trimmer.start()
        log.info(
            "kichat listening on http://%s:%d (Socket.IO at %s), upstream %s",
            self.settings.server.host, self.port, self.settings.socketio.path,
            _redact_url(self.settings.pusher.url),
        )  # fmt: skip

    async def close(self) -> None:
        if self.stopping:
            return
        self.stopping = True  # /readyz: 503 from now on
        if not self._bound:
            await self.kick.aclose()  # the only thing running before the port is bound
            return
        loop = asyncio.get_running_loop()
        started = loop.time()
        grace = self.settings.server.shutdown_timeout
        deadline = started + grace
        clients = len(self.sio.sessions)
        log.info("shutting down: draining %d client connection(s), at most %.1f s", clients, grace)
        # Feeds first, while clients still receive: other nodes take them over make-before-break.
        await self.gateway.hand_over(within=grace / 2)
        # The upstream closes while clients drain: events arriving now would reach nobody.
        upstream = asyncio.ensure_future(self._close_upstream())
        await self.sio.close(grace=max(0.0, deadline - loop.time()))
        await self.sessions.flush()  # in a cluster, another node may restore them
        if self.link is not None:
            self.link.close()
        if self._internal is not None:
            self._internal.close()
        await self.http.close(grace_period=max(0.0, deadline - loop.time()))
        await upstream
        await self.broker.close()
        await self.kick.aclose()
        self.loop_lag.stop()
        self.trimmer.stop()
        log.info("stopped after %.2f s", loop.time() - started)

    async def _close_upstream(self) -> None:
        await self.gateway.close()
        await self.feeds.close()
        await self.pool.close()

    async def __aenter__(self) -> App:
        try:
            await self.start()
        except BaseException:
            await self.close()  # e.g. a busy port: stop the upstream already started
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _broker(s: Settings, node_id: str) -> Broker:
    if not s.cluster.redis_url:
        return MemoryBroker(
            window=s.socketio.recovery_window,
            max_bytes=s.socketio.recovery_buffer_bytes,
            node_id=node_id,
        )
    from kichat.broker.redis import RedisBroker  # noqa: PLC0415  (only in cluster mode)

    return RedisBroker(
        s.cluster.redis_url,
        node_id=node_id,
        prefix=s.cluster.key_prefix,
        window=s.socketio.recovery_window,
        lease_ttl=s.cluster.lease_ttl,
        node_timeout=s.cluster.node_timeout,
        history_max=s.cluster.history_size,
        fingerprint=fingerprint(s),
        command_timeout=s.cluster.command_timeout,
    )


def fingerprint(s: Settings) -> str:
    """What every node of one cluster must agree on (not secret: a hash)."""
    shared = repr((s.pusher.url.split("?")[0], s.relay.chatroom_channels,
                   s.relay.channel_channels, s.socketio.recovery_window))  # fmt: skip
    return hashlib.sha256(shared.encode()).hexdigest()[:16]


class _BrokerEvents:
    """Routes the broker's callbacks to the parts they concern."""

    def __init__(self, app: App) -> None:
        self.app = app
        # The hot path: one attribute lookup less per publication.
        self.on_publication = app.gateway.on_publication

    def on_gap(self, topics: frozenset[str]) -> None:
        self.app.sessions.resync(topics)

    def on_reset(self, epoch: str) -> None:
        self.app.gateway.on_reset()
        self.app.sessions.on_reset()

    def on_lease_renewed(self, lease: Lease) -> None:
        self.app.gateway.on_lease_renewed(lease)

    def on_lease_lost(self, topic: str) -> None:
        self.app.gateway.on_lease_lost(topic)

    def on_topic_released(self, topic: str) -> None:
        self.app.gateway.on_topic_released(topic)

    def on_session_taken(self, pid: str) -> None:
        self.app.sessions.on_session_taken(pid)

    def on_hand_over(self, topic: str) -> None:
        self.app.gateway.on_hand_over(topic)


def _redact_url(url: str) -> str:
    """Drop query strings and credentials from a URL for logging."""
    head = url.split("?", 1)[0]
    scheme, sep, rest = head.partition("://")
    if "@" in rest:
        rest = rest.split("@", 1)[1]
    return f"{scheme}{sep}{rest}"


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """Run a gateway until ``stop`` is set."""
    async with App(settings):
        await stop.wait()
