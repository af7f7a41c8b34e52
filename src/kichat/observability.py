"""Logging set-up and metrics, in one place.

Metrics are read from the components' own counters at scrape time (a custom Prometheus
collector), so hot paths only ever increment plain integers. Every metric is named
``kichat_*``; no label carries a room, a slug, a client id or anything else a client chooses.

Logger names: ``kichat.http``, ``kichat.sio``, ``kichat.relay``, ``kichat.kick.api``,
``kichat.kick.pusher``, ``kichat.web``, ``kichat.app``, ``kichat.sim``. Lifecycle changes log
at INFO, one line each; per-message logs exist only at DEBUG.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from kichat.app import App

# -- logging -----------------------------------------------------------------------------------

_STANDARD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

# Whatever a log line quotes (a client's packet, a name Kick sent, an exception's message) is
# kept to these sizes, so that no input can make one line expensive to write or to store.
MAX_LOG_MESSAGE = 2000  # characters
MAX_LOG_TRACEBACK = 8000  # characters of a traceback, its start and its end kept


def clip(text: str, limit: int) -> str:
    """``text`` cut to about ``limit`` characters, keeping its start and its end."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]} [... {len(text) - 2 * half} characters cut ...] {text[-half:]}"


class TextFormatter(logging.Formatter):
    """The plain format, with messages and tracebacks bounded."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return clip(super().formatMessage(record), MAX_LOG_MESSAGE)

    def formatException(self, ei: Any) -> str:
        return clip(super().formatException(ei), MAX_LOG_TRACEBACK)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, plus any ``extra=`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": clip(record.getMessage(), MAX_LOG_MESSAGE),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = clip(self.formatException(record.exc_info), MAX_LOG_TRACEBACK)
        return orjson.dumps(entry, default=str).decode()


def configure_logging(level: str = "info", fmt: str = "text", process: str = "") -> None:
    """Called once, by the CLI; library code never configures handlers. ``process`` names the
    worker process each line comes from (``kichat serve --workers``)."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
        if process:
            handler.addFilter(_Tag(process))
    else:
        where = f"[{process}] " if process else ""
        handler.setFormatter(
            TextFormatter(f"%(asctime)s %(levelname)-7s {where}%(name)s: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Third-party chatter that would otherwise log per request at INFO. httpcore logs every
    # response's headers at DEBUG, which for the forwarded user endpoints include the Set-Cookie
    # of a user's Kick session: it must stay quiet even at log.level=debug.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    logging.getLogger("websockets").setLevel(logging.WARNING)


class _Tag(logging.Filter):
    """Adds a ``worker`` field to JSON log lines."""

    def __init__(self, process: str) -> None:
        super().__init__()
        self.process = process

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.process
        return True


# -- event loop lag ----------------------------------------------------------------------------


class LoopLagMonitor:
    """How late a timer fires: the event loop's responsiveness, for /readyz and /metrics."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.lag = 0.0
        self.max_lag = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            expected = loop.time() + self.interval
            await asyncio.sleep(self.interval)
            self.lag = max(0.0, loop.time() - expected)
            self.max_lag = max(self.max_lag, self.lag)

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None


# -- web counters ------------------------------------------------------------------------------


@dataclass
class WebStats:
    requests: Counter[tuple[str, int]] = field(default_factory=Counter)  # (route, status)
    rate_limited: Counter[str] = field(default_factory=Counter)  # kind: rest, subscribe, ...
    unauthorized: int = 0


# -- the collector -----------------------------------------------------------------------------


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


_CONNECTION_STATES = ("connecting", "connected", "backoff", "fatal", "closed")


def _labelled(
    kind: type[CounterMetricFamily] | type[GaugeMetricFamily],
    name: str,
    doc: str,
    label: str,
    values: Mapping[str, float],
) -> Metric:
    """One metric family with one label, a sample per key of ``values`` (sorted)."""
    family = kind(name, doc, labels=[label])
    for key, value in sorted(values.items()):
        family.add_metric([key], value)
    return family


class GatewayCollector(Collector):
    """Reads the running gateway's counters whenever /metrics is scraped."""

    def __init__(self, app: App, clock: Callable[[], float] = time.time) -> None:
        self.app = app
        self.started = clock()

    def _cluster(self) -> Iterator[Metric]:
        b = self.app.broker.status()
        info = GaugeMetricFamily(
            "kichat_cluster_node", "This node: its id and broker (memory or redis)",
            labels=["node", "backend"],
        )  # fmt: skip
        info.add_metric([b.node_id, b.backend], 1)
        yield info
        yield _gauge("kichat_cluster_connected", "1 while the broker (Redis) is reachable",
                     int(b.connected and b.problem is None))  # fmt: skip
        if b.rtt_ms is not None:
            yield _gauge("kichat_cluster_redis_rtt_seconds", "Round trip of the last Redis PING",
                         b.rtt_ms / 1000)  # fmt: skip
        yield _gauge("kichat_cluster_owned_feeds", "Feeds (Kick channel groups) this node owns",
                     b.owned_topics)  # fmt: skip
        yield _gauge("kichat_cluster_read_feeds", "Feeds this node's clients read",
                     b.subscribed_topics)  # fmt: skip
        for name, doc, value in (
            ("publications", "Publications this node made", b.published),
            ("publications_rejected", "Publications refused (lease lost, duplicate)",
             b.publish_rejected),
            ("deliveries", "Publications delivered to this node", b.delivered),
            ("takeovers", "Feeds taken over from a dead or fenced owner", b.takeovers),
            ("leases_lost", "Feeds this node lost to another", b.leases_lost),
            ("gaps", "Feeds whose history could not fill a reconnect's gap", b.gaps),
            ("resyncs", "Reconnects of the subscriber followed by a catch-up", b.resyncs),
            ("resets", "Times the shared state was lost (new epoch)", b.resets),
            ("sessions_saved", "Session records written", b.sessions_saved),
            ("sessions_taken", "Sessions restored from the broker", b.sessions_taken),
        ):  # fmt: skip
            yield _counter(f"kichat_cluster_{name}_total", doc, value)

    def collect(self) -> Iterator[Metric]:
        yield from self._downstream()
        yield from self._relay()
        yield from self._upstream()
        yield from self._cluster()
        yield from self._web()

    def _downstream(self) -> Iterator[Metric]:
        sio = self.app.sio
        snap = self.app.clients_snapshot()
        by_transport = snap["connections_by_transport"]
        yield _labelled(
            GaugeMetricFamily, "kichat_connected_clients", "Engine.IO connections by transport",
            "transport", {t: by_transport.get(t, 0) for t in ("websocket", "polling")},
        )  # fmt: skip
        yield _gauge("kichat_sockets", "Connected Socket.IO sockets", snap["sockets"])
        yield _gauge(
            "kichat_detached_sockets",
            "Sockets that lost their transport and may still recover",
            snap["detached_sockets"],
        )
        yield _gauge(
            "kichat_pending_connections",
            "Sessions that have not joined a namespace yet",
            snap["pending_connections"],
        )
        yield _gauge("kichat_rooms", "Socket.IO rooms with members", snap["rooms"])
        yield _gauge(
            "kichat_recovery_log_bytes",
            "Bytes kept for connection recovery",
            snap["recovery_log_bytes"],
        )
        st = sio.stats
        yield _counter("kichat_broadcasts_total", "Broadcast packets encoded", st.broadcasts)
        yield _counter(
            "kichat_deliveries_total", "Broadcast packets queued to clients", st.deliveries
        )
        yield _counter(
            "kichat_slow_clients_total", "Clients cut off for not reading", st.slow_clients
        )
        yield _counter(
            "kichat_ping_timeouts_total", "Clients that stopped answering pings", st.ping_timeouts
        )
        yield _counter(
            "kichat_client_parse_errors_total", "Malformed packets from clients", st.parse_errors
        )
        yield _labelled(
            CounterMetricFamily, "kichat_refused_handshakes_total",
            "Engine.IO handshakes refused, by reason", "reason", st.refused_handshakes,
        )  # fmt: skip
        yield _counter(
            "kichat_detached_evicted_total",
            "Sessions waiting to be recovered ended early (too many from one address)",
            st.detached_evicted,
        )
        yield _labelled(
            CounterMetricFamily, "kichat_recoveries_total", "Connection state recovery attempts",
            "result", {"recovered": st.recovered, "failed": st.recovery_failed},
        )  # fmt: skip
        yield _labelled(
            CounterMetricFamily, "kichat_disconnects_total", "Sockets ended, by reason",
            "reason", st.disconnects,
        )  # fmt: skip

    def _relay(self) -> Iterator[Metric]:
        gw = self.app.gateway
        st = gw.stats
        feeds = self.app.feeds
        fs = feeds.stats
        yield _gauge("kichat_subscribed_rooms", "Chatroom rooms fed from upstream", gw.active_rooms)
        yield _gauge(
            "kichat_upstream_subscriptions",
            "Pusher channels this node subscribes",
            len(feeds.upstream_channels),
        )
        yield _counter(
            "kichat_upstream_events_total", "Application events received from Kick", fs.events_in
        )
        yield _counter("kichat_events_relayed_total", "Events broadcast to rooms", st.events_out)
        yield _counter(
            "kichat_duplicates_dropped_total",
            "Alias copies of an event dropped",
            fs.duplicates_dropped,
        )
        yield _counter(
            "kichat_upstream_malformed_total", "Upstream events with undecodable data", fs.malformed
        )
        yield _counter(
            "kichat_channel_lookup_failures_total", "Failed channel-id lookups", st.lookup_failures
        )
        yield _counter(
            "kichat_backfilled_total", "Chat messages published from Kick's history after a "
            "takeover", fs.backfilled,
        )  # fmt: skip
        service = self.app.service.stats
        yield _labelled(
            CounterMetricFamily, "kichat_subscribe_requests_total", "subscribe calls by outcome",
            "outcome", service.subscribes,
        )  # fmt: skip
        yield _labelled(
            CounterMetricFamily, "kichat_refused_connections_total",
            "Socket.IO connections refused", "reason", service.refused_connections,
        )  # fmt: skip

    def _upstream(self) -> Iterator[Metric]:
        status = self.app.pool.status()
        states: Counter[str] = Counter(c.state for c in status.connections)
        yield _labelled(
            GaugeMetricFamily, "kichat_upstream_connections", "Pusher connections by state",
            "state", {state: states[state] for state in _CONNECTION_STATES},
        )  # fmt: skip
        yield _gauge(
            "kichat_upstream_fatal",
            "1 while Pusher refuses us fatally (e.g. 4001)",
            int(status.fatal),
        )
        yield _labelled(
            CounterMetricFamily, "kichat_upstream_reconnects_total",
            "Upstream reconnects by close code", "code", status.reconnects_by_code,
        )  # fmt: skip
        api = self.app.kick.stats
        yield _labelled(
            CounterMetricFamily, "kichat_kick_api_requests_total", "Requests to Kick's REST API",
            "outcome", api.requests,
        )  # fmt: skip
        yield _counter(
            "kichat_kick_api_cache_hits_total",
            "Channel lookups answered from cache",
            api.cache_hits,
        )
        yield _counter(
            "kichat_kick_api_cache_misses_total", "Channel lookups not in cache", api.cache_misses
        )

    def _web(self) -> Iterator[Metric]:
        web = self.app.web_stats
        requests = CounterMetricFamily(
            "kichat_rest_requests_total",
            "REST requests by route and status",
            labels=["route", "status"],
        )
        for (route, status), count in sorted(web.requests.items()):
            requests.add_metric([route, str(status)], count)
        yield requests
        yield _labelled(
            CounterMetricFamily, "kichat_rate_limited_total", "Requests refused by a rate limit",
            "kind", web.rate_limited,
        )  # fmt: skip
        yield _counter(
            "kichat_unauthorized_total",
            "Requests refused for a missing or bad API key",
            web.unauthorized,
        )
        yield _gauge(
            "kichat_event_loop_lag_seconds", "Delay of a 0.5 s timer", self.app.loop_lag.lag
        )
        yield _gauge("kichat_start_time_seconds", "Unix time the gateway started", self.started)
