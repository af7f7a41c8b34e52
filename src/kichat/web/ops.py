"""Operations endpoints: ``/healthz``, ``/readyz``, ``/metrics``, ``/stats``, ``/routes``,
``/openapi.json``.

``/healthz`` answers while the process can serve HTTP. ``/readyz`` answers 503 with reasons
when the gateway cannot do its job: Pusher refused us fatally (e.g. 4001, a rotated key), the
event loop is lagging, or the gateway is shutting down.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, Final

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

from kichat import __version__, workers
from kichat.http import Request, Response
from kichat.web import openapi
from kichat.web.router import Route, Router

if TYPE_CHECKING:
    from kichat.app import App

LAG_LIMIT: Final = 1.0  # seconds of event-loop lag before /readyz says not ready


class Ops:
    def __init__(self, app: App, metrics: CollectorRegistry) -> None:
        self.app = app
        self.metrics = metrics
        self.started = time.monotonic()

    def install(self, router: Router) -> None:
        ops = "operations"
        probe = {"limited": False}  # probes and scrapers are never rate limited
        for route in (
            Route("GET", "/healthz", "healthz", self.healthz, "Liveness", ops, **probe),
            Route("GET", "/readyz", "readyz", self.readyz, "Readiness, with reasons", ops, **probe),
            Route("GET", "/metrics", "metrics", self.metrics_text, "Prometheus text", ops, **probe),
            Route("GET", "/stats", "stats", self.stats, "Operator snapshot (JSON)", ops),
            Route("GET", "/routes", "routes", self.routes, "The endpoint list", "meta"),
            Route("GET", "/openapi.json", "openapi", self.openapi, "OpenAPI 3.1 document", "meta"),
        ):  # fmt: skip
            router.add(route)

    async def healthz(self, request: Request, params: dict[str, str]) -> Response:
        return Response.json({"status": "ok"})

    async def readyz(self, request: Request, params: dict[str, str]) -> Response:
        reasons = self.not_ready_reasons()
        if reasons:
            return Response.json({"status": "not_ready", "reasons": reasons}, 503)
        return Response.json({"status": "ready"})

    def not_ready_reasons(self) -> list[str]:
        reasons = []
        if self.app.stopping:
            reasons.append("shutting down")
        status = self.app.pool.status()
        if status.fatal:
            reasons.append(f"upstream refuses the gateway: {status.fatal_error}")
        broker = self.app.broker.status()
        if broker.problem is not None:
            reasons.append(f"cluster: {broker.problem}")
        lag = self.app.loop_lag.lag
        if lag > LAG_LIMIT:
            reasons.append(f"event loop lagging by {lag:.2f} s")
        return reasons

    async def metrics_text(self, request: Request, params: dict[str, str]) -> Response:
        text = generate_latest(self.metrics).decode()
        worker = self.app.worker
        if worker is not None and "worker" not in request.query:
            text = await workers.all_metrics(worker, text)  # the whole server, per worker
        return Response(200, text.encode(), [("Content-Type", CONTENT_TYPE_LATEST)])

    async def stats(self, request: Request, params: dict[str, str]) -> Response:
        worker = self.app.worker
        if worker is not None and "worker" not in request.query:
            return Response.json(await workers.all_stats(worker, self.snapshot()))
        return Response.json(self.snapshot())

    def snapshot(self) -> dict[str, Any]:
        app = self.app
        pool = app.pool.status()
        gw = app.gateway
        snapshot = {
            "version": __version__,
            "uptime_seconds": round(time.monotonic() - self.started, 1),
            "clients": app.clients_snapshot(),
            "sio": {k: v for k, v in vars(app.sio.stats).items() if k != "disconnects"}
            | {"disconnects": dict(app.sio.stats.disconnects)},
            "relay": vars(gw.stats)
            | vars(app.feeds.stats)
            | {
                "active_rooms": gw.active_rooms,
                "upstream_channels": len(app.feeds.upstream_channels),
            },
            "subscribes": dict(app.service.stats.subscribes),
            "refused_connections": dict(app.service.stats.refused_connections),
            "upstream": {
                "fatal": pool.fatal,
                "fatal_error": pool.fatal_error,
                "channels": pool.channels,
                # Pool-wide, closed connections included (as kichat_upstream_reconnects_total).
                "reconnects": dict(pool.reconnects_by_code),
                "connections": [
                    {
                        "id": c.id,
                        "state": c.state,
                        "channels": c.channels,
                        "last_close_code": c.last_close_code,
                        "reconnects": dict(c.reconnects_by_code),
                        "events_received": c.events_received,
                    }
                    for c in pool.connections
                ],
            },
            "kick_api": {
                "requests": dict(app.kick.stats.requests),
                "cache_hits": app.kick.stats.cache_hits,
                "cache_misses": app.kick.stats.cache_misses,
                "state": app.kick.stats.upstream_state,
            },
            "rest": self._rest_figures(),
            "top_chatrooms": [
                {"chatroomId": key.chatroom_id, "channelName": key.slug, "clients": n}
                for key, n in app.registry.top(10)
            ],
            "event_loop_lag_seconds": round(app.loop_lag.lag, 4),
            "ready": not self.not_ready_reasons(),
        }
        cluster = self._cluster_figures()
        if cluster is not None:
            snapshot["cluster"] = cluster
        if app.link is not None:
            snapshot["worker"] = {
                "pid": os.getpid(),
                "handed_over": app.link.handed,  # connections passed to the worker owning them
                "adopted": app.link.adopted,
            }
        return snapshot

    def _cluster_figures(self) -> dict[str, Any] | None:
        """Cluster mode's figures (``None`` in one process: there is no cluster to show)."""
        app = self.app
        status = app.broker.status()
        if status.backend == "memory":
            return None
        figures = {k: v for k, v in asdict(status).items() if k != "details"} | status.details
        figures["owned"] = sorted(app.feeds.owned)
        figures["read"] = sorted(app.gateway.topics)
        return figures

    def _rest_figures(self) -> dict[str, Any]:
        web = self.app.web_stats
        requests: dict[str, dict[str, int]] = {}
        for (route, status), count in sorted(web.requests.items()):
            requests.setdefault(route, {})[str(status)] = count
        return {
            "requests": requests,
            "rate_limited": dict(web.rate_limited),
            "unauthorized": web.unauthorized,
        }

    async def routes(self, request: Request, params: dict[str, str]) -> Response:
        return Response.json(
            [
                {
                    "path": r.pattern,
                    "method": r.method,
                    "description": r.summary,
                    "category": r.category,
                }
                for r in self.app.router.routes
                if r.public
            ]
        )

    async def openapi(self, request: Request, params: dict[str, str]) -> Response:
        return Response.json(openapi.document(self.app.router.routes, self.app.settings))
