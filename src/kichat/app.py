"""The composition root: builds every part from :class:`~kichat.config.Settings`, owns start-up
and graceful shutdown.

::

    Kick (Pusher) -> PusherPool -> Gateway.on_upstream_event -> Namespace.emit -> clients
    clients -> subscribe -> RelayService -> Registry / Gateway.acquire -> PusherPool.subscribe
    HTTP :3000 -> Frontend -> /socket.io/ (Server) | REST (RestApi) | ops (Ops)

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
import logging
from typing import Final

from prometheus_client import ProcessCollector
from prometheus_client.registry import CollectorRegistry

from kichat.config import Settings
from kichat.http import HttpServer
from kichat.kick.api import KickApi
from kichat.kick.pusher import Backoff, PusherPool
from kichat.limits import ApiKeys, parse_networks
from kichat.observability import GatewayCollector, LoopLagMonitor, WebStats
from kichat.relay import Gateway, Registry, RelayService
from kichat.sio import Server
from kichat.web.frontend import Frontend
from kichat.web.ops import Ops
from kichat.web.rest import RestApi
from kichat.web.router import Router

log = logging.getLogger("kichat.app")

_MIN_BODY: Final = 64 * 1024


class App:
    def __init__(self, settings: Settings) -> None:
        s = settings
        self.settings = s
        self.stopping = False
        self.kick = KickApi(
            s.kick_api.url,
            timeout=s.kick_api.timeout,
            retries=s.kick_api.retries,
            proxy=s.kick_api.proxy or None,
            headers=s.kick_api.headers,
            cache_ttl=s.kick_api.channel_cache_ttl,
            not_found_ttl=s.kick_api.not_found_ttl,
        )
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
        )
        self.nsp = self.sio.of("/")
        self.registry = Registry()
        self.gateway = Gateway(
            self.pool,
            self.kick,
            self._broadcast,
            lambda key: self.registry.count(key) > 0,
            chatroom_templates=s.relay.chatroom_channels,
            channel_templates=s.relay.channel_channels,
            linger=s.relay.linger,
            dedupe_window=s.relay.dedupe_window,
        )
        trusted = parse_networks(s.server.trusted_proxies)
        api_keys = ApiKeys(tuple(s.limits.api_keys))
        self.service = RelayService(
            self.nsp,
            self.gateway,
            self.registry,
            max_subscriptions=s.limits.subscriptions_per_client,
            subscribe_rate=s.limits.subscribe_rate,
            connections_per_ip=s.limits.connections_per_ip,
            api_keys=api_keys,
            trusted_proxies=trusted,
            upstream_refusal=lambda: self.pool.status().fatal_error,
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

    # The two glue points of the hot path, kept as plain methods (one call each per event).
    def _upstream_event(self, channel: str, event: str, data: object) -> None:
        self.gateway.on_upstream_event(channel, event, data)

    def _broadcast(self, event: str, payload: object, room: str) -> int:
        return self.nsp.emit(event, payload, to=room)

    @property
    def port(self) -> int:
        return self.http.port

    async def start(self) -> None:
        await self.pool.start()
        await self.sio.start()
        self.loop_lag.start()
        await self.http.start(self.settings.server.host, self.settings.server.port)
        log.info(
            "kichat listening on http://%s:%d (Socket.IO at %s), upstream %s",
            self.settings.server.host, self.port, self.settings.socketio.path,
            _redact_url(self.settings.pusher.url),
        )  # fmt: skip

    async def close(self) -> None:
        if self.stopping:
            return
        self.stopping = True  # /readyz: 503 from now on
        loop = asyncio.get_running_loop()
        started = loop.time()
        grace = self.settings.server.shutdown_timeout
        deadline = started + grace
        clients = len(self.sio.sessions)
        log.info("shutting down: draining %d client connection(s), at most %.1f s", clients, grace)
        # The upstream closes while clients drain: events arriving now would reach nobody.
        upstream = asyncio.ensure_future(self._close_upstream())
        await self.sio.close(grace=grace)
        await self.http.close(grace_period=max(0.0, deadline - loop.time()))
        await upstream
        await self.kick.aclose()
        self.loop_lag.stop()
        log.info("stopped after %.2f s", loop.time() - started)

    async def _close_upstream(self) -> None:
        await self.gateway.close()
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
