"""The simulator's HTTP control API, on the simulator's own port under ``/_sim/``.

JSON in, JSON out, one request per connection (``Connection: close``). Bodies need a
``Content-Length``. Unknown keys, wrong types and out-of-range values get **400**
``{"error": "<message>", "code": "<stable code>"}``; a bench while one runs gets **409**; an
unknown path 404; a known path with the wrong method 405.

The endpoints are declared once, in :data:`ENDPOINTS` below, with their bodies and answers:
``GET /_sim/`` lists them as JSON and the README's "Simulator control API" section shows the
same table. The benchmark runner and the demo are written against them: keep them.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, cast

import orjson
from websockets.http11 import Response

from kichat.errors import ClientInputError
from kichat.sim.channels import SimChannel
from kichat.sim.faults import RestStatus
from kichat.sim.httpio import json_response

if TYPE_CHECKING:
    from kichat.sim.server import KickSimulator

log = logging.getLogger("kichat.sim")

Body = dict[str, Any]
Handler = Callable[[Body], Awaitable[object]]

_STATUS_FOR_CODE: Final = {"bench_running": 409}
_MISSING: Final = object()


@dataclass(frozen=True, slots=True)
class Endpoint:
    method: str
    path: str
    handler: str  # the ControlApi method's name
    summary: str
    body: str | None  # the JSON body's shape, None for no body
    returns: str


ENDPOINTS: Final = (
    Endpoint("GET", "/_sim/", "_index", "This list.", None,
             '{"endpoints": [{"method", "path", "summary", "body", "returns"}], "errors": str}'),
    Endpoint("GET", "/_sim/stats", "_stats", "Counters of the simulator.", None,
             '{"connections": n, "connections_opened": n, "subscriptions": {"<channel>": n}, '
             '"rest_requests": {"<path>": n}, "connections_refused": n, "events_published": n, '
             '"frames_sent": n, "pings_sent": n, "pongs_sent": n, "ignore_pings": bool}'),
    Endpoint("POST", "/_sim/publish", "_publish",
             "Send one event on a Pusher channel, data double-encoded as Kick does (over 10 KB "
             "encoded is refused).",
             '{"channel": str, "event": str, "data": any}', '{"recipients": n}'),
    Endpoint("POST", "/_sim/event", "_event",
             "Publish a generated payload of an event on the channel Kick uses for it (short "
             'names such as "ChatMessageEvent" accepted).',
             '{"event": str, "slug": str}', '{"channel": str, "data": any, "recipients": n}'),
    Endpoint("POST", "/_sim/script", "_script",
             "Publish every event type once (or the listed ones), in order.",
             '{"slug": str, "events": [str] | null, "interval": seconds}',
             '{"published": [{"event", "channel", "recipients"}]}'),
    Endpoint("POST", "/_sim/bench", "_bench_start",
             "Start a benchmark run (409 while one runs): ChatMessageEvents on "
             'chatrooms.{id}.v2, content "<seq> <publish time_ns>", seq per chatroom from 1.',
             '{"chatroom_ids": [int], "rate": per second, "duration": seconds}',
             '{"started": true}'),
    Endpoint("GET", "/_sim/bench", "_bench_status", "The benchmark run's progress.", None,
             '{"running": bool, "published": {"<chatroom_id>": n}, "started_at_ns": int '
             '(0 before the first run), "finished_at_ns": int | null}'),
    Endpoint("DELETE", "/_sim/bench", "_bench_stop", "Stop a benchmark run.", None,
             '{"stopped": bool}'),
    Endpoint("POST", "/_sim/traffic", "_traffic_start",
             "Random events at rate/s per channel (slugs null: every known channel).",
             '{"rate": per second, "slugs": [str] | null, "mix": "realistic" (default) | '
             '"chat" | "uniform"}', '{"started": true}'),
    Endpoint("GET", "/_sim/traffic", "_traffic_status", "Whether traffic runs.", None,
             '{"running": bool}'),
    Endpoint("DELETE", "/_sim/traffic", "_traffic_stop", "Stop the traffic.", None,
             '{"stopped": bool}'),
    Endpoint("POST", "/_sim/fault", "_fault",
             "Inject a fault (close and drop answer the number of connections hit).",
             '{"kind": "close", "code": int, "message"?: str, "channel"?: str} | '
             '{"kind": "drop", "channel"?: str} | '
             '{"kind": "ignore_pings", "enabled": bool, "new_connections"?: bool} | '
             '{"kind": "subscribe", "pattern": glob, "mode": "error" | "swallow", '
             '"count"?: int | null} | '
             '{"kind": "rest", "slug": str | "*", "status": 403 | 404 | 500 | "hang" | "delay", '
             '"count"?: int | null, "delay"?: seconds} | '
             '{"kind": "refuse", "count": int, "code"?: int} | {"kind": "clear"}',
             '{"ok": true, "connections"?: n}'),
    Endpoint("GET", "/_sim/channels", "_channels", "The simulated channels.", None,
             '{"channels": [{"slug", "channel_id", "chatroom_id", "user_id", "username", '
             '"live"}]}'),
    Endpoint("POST", "/_sim/channels", "_add_channel", "Add a channel (ids optional).",
             '{"slug": str, "channel_id"?: int, "chatroom_id"?: int, "live"?: bool}',
             "the channel, as in GET /_sim/channels"),
    Endpoint("POST", "/_sim/options", "_options",
             "Set options: send each chatroom event on the legacy alias too (true, false or a "
             "probability).",
             '{"duplicate_on_legacy_alias": bool | probability}', "the options now in force"),
)  # fmt: skip
_ERRORS: Final = (
    '400 {"error": message, "code": stable code} for bad JSON, unknown fields, wrong types or '
    "values; 409 while a bench runs; 404 for an unknown path; 405 for a wrong method"
)


class ControlApi:
    def __init__(self, sim: KickSimulator) -> None:
        self.sim = sim
        self.routes: dict[tuple[str, str], Handler] = {
            (e.method, e.path): getattr(self, e.handler) for e in ENDPOINTS
        }

    async def handle(self, method: str, path: str, query: str, body: bytes) -> Response:
        path = "/_sim/" if path == "/_sim" else path
        handler = self.routes.get((method, path))
        if handler is None:
            if any(p == path for _, p in self.routes):
                return json_response(
                    405, {"error": f"{method} is not allowed on {path}", "code": "bad_method"}
                )
            return json_response(404, {"error": f"no control endpoint {path}", "code": "not_found"})
        try:
            result = await handler(_parse(body) if method == "POST" else {})
        except ClientInputError as exc:
            log.info("control %s %s refused: %s", method, path, exc)
            return json_response(
                _STATUS_FOR_CODE.get(exc.code, 400), {"error": exc.message, "code": exc.code}
            )
        except KeyError as exc:
            return json_response(
                400, {"error": f"unknown channel {exc.args[0]!r}", "code": "unknown_channel"}
            )
        return json_response(200, result)

    # -- endpoints -------------------------------------------------------------------------------

    async def _index(self, _: Body) -> object:
        return {
            "endpoints": [
                {
                    "method": e.method,
                    "path": e.path,
                    "summary": e.summary,
                    "body": e.body,
                    "returns": e.returns,
                }
                for e in ENDPOINTS
            ],
            "errors": _ERRORS,
        }

    async def _stats(self, _: Body) -> object:
        return self.sim.stats()

    async def _publish(self, body: Body) -> object:
        _only(body, "channel", "event", "data")
        if "data" not in body:
            raise ClientInputError("missing_field", "'data' is required (any JSON value)")
        n = await self.sim.publish(_str(body, "channel"), _str(body, "event"), body["data"])
        return {"recipients": n}

    async def _event(self, body: Body) -> object:
        _only(body, "event", "slug")
        published = await self.sim.publish_generated(_str(body, "event"), _str(body, "slug"))
        return {
            "channel": published.channel,
            "data": published.data,
            "recipients": published.recipients,
        }

    async def _script(self, body: Body) -> object:
        _only(body, "slug", "events", "interval")
        events = _opt(body, "events", list)
        if events is not None and not all(isinstance(e, str) for e in events):
            raise ClientInputError("bad_events", "events must be a list of event names")
        interval = _number(body, "interval", 0.0)
        if not 0 <= interval <= 60:
            raise ClientInputError("bad_interval", "interval must be in [0, 60] seconds")
        done = await self.sim.run_script(_str(body, "slug"), events, interval)
        return {
            "published": [
                {"event": p.event, "channel": p.channel, "recipients": p.recipients} for p in done
            ]
        }

    async def _bench_start(self, body: Body) -> object:
        _only(body, "chatroom_ids", "rate", "duration")
        ids = _required(body, "chatroom_ids", list)
        self.sim.start_bench(ids, _number(body, "rate"), _number(body, "duration"))
        return {"started": True}

    async def _bench_status(self, _: Body) -> object:
        b = self.sim.bench
        return {
            "running": b.running,
            "published": {str(k): v for k, v in b.published.items()},
            "started_at_ns": b.started_at_ns,
            "finished_at_ns": b.finished_at_ns,
        }

    async def _bench_stop(self, _: Body) -> object:
        return {"stopped": await self.sim.stop_bench()}

    async def _traffic_start(self, body: Body) -> object:
        _only(body, "rate", "slugs", "mix")
        slugs = _opt(body, "slugs", list)
        if slugs is not None and not all(isinstance(s, str) for s in slugs):
            raise ClientInputError("bad_slugs", "slugs must be a list of strings or null")
        mix = _opt(body, "mix", str) or "realistic"
        self.sim.start_traffic(_number(body, "rate"), slugs, mix)
        return {"started": True}

    async def _traffic_status(self, _: Body) -> object:
        return {"running": self.sim.traffic_running}

    async def _traffic_stop(self, _: Body) -> object:
        running = self.sim.traffic_running
        await self.sim.stop_traffic()
        return {"stopped": running}

    async def _fault(self, body: Body) -> object:
        kind = _str(body, "kind")
        sim = self.sim
        if kind == "close":
            _only(body, "kind", "code", "message", "channel")
            n = await sim.close_connections(
                _int(body, "code"), _opt(body, "message", str), channel=_opt(body, "channel", str)
            )
            return {"ok": True, "connections": n}
        if kind == "drop":
            _only(body, "kind", "channel")
            return {
                "ok": True,
                "connections": await sim.drop_connections(channel=_opt(body, "channel", str)),
            }
        if kind == "ignore_pings":
            _only(body, "kind", "enabled", "new_connections")
            enabled = _required(body, "enabled", bool)
            sim.ignore_pings(enabled, new_connections=bool(_opt(body, "new_connections", bool)))
            return {"ok": True, "ignore_pings": enabled}
        if kind == "subscribe":
            _only(body, "kind", "pattern", "mode", "count")
            sim.fail_subscriptions(
                _str(body, "pattern"), _opt(body, "mode", str) or "error", _count(body)
            )
            return {"ok": True}
        if kind == "rest":
            _only(body, "kind", "slug", "status", "count", "delay")
            status = body.get("status", _MISSING)
            if status is _MISSING or isinstance(status, bool) or not isinstance(status, int | str):
                raise ClientInputError(
                    "bad_status", "status must be 403, 404, 500, 'hang' or 'delay'"
                )
            delay = _number(body, "delay", 0.0)
            sim.fail_rest(_str(body, "slug"), cast(RestStatus, status), _count(body), delay)
            return {"ok": True}
        if kind == "refuse":
            _only(body, "kind", "count", "code")
            sim.refuse_connections(_int(body, "count"), _int(body, "code", 4100))
            return {"ok": True}
        if kind == "clear":
            _only(body, "kind")
            sim.clear_faults()
            return {"ok": True}
        raise ClientInputError(
            "bad_kind", "kind must be close, drop, ignore_pings, subscribe, rest, refuse or clear"
        )

    async def _channels(self, _: Body) -> object:
        return {"channels": [_channel_json(c) for c in self.sim.channels]}

    async def _add_channel(self, body: Body) -> object:
        _only(body, "slug", "channel_id", "chatroom_id", "live")
        ch = self.sim.add_channel(
            _str(body, "slug"),
            _opt_int(body, "channel_id"),
            _opt_int(body, "chatroom_id"),
            bool(_opt(body, "live", bool)),
        )
        return _channel_json(ch)

    async def _options(self, body: Body) -> object:
        _only(body, "duplicate_on_legacy_alias")
        if "duplicate_on_legacy_alias" in body:
            value = body["duplicate_on_legacy_alias"]
            if not isinstance(value, bool) and not (
                isinstance(value, int | float) and 0 <= value <= 1
            ):
                raise ClientInputError(
                    "bad_option", "duplicate_on_legacy_alias must be a bool or a probability"
                )
            self.sim.duplicate_on_legacy_alias = value
        return {"duplicate_on_legacy_alias": self.sim.duplicate_on_legacy_alias}


# -- validation ---------------------------------------------------------------------------------


def _parse(body: bytes) -> Body:
    if not body:
        return {}
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ClientInputError("bad_json", f"body is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ClientInputError("bad_json", "body must be a JSON object")
    return value


def _only(body: Body, *keys: str) -> None:
    extra = sorted(set(body) - set(keys))
    if extra:
        raise ClientInputError(
            "unknown_field", f"unknown field(s) {', '.join(extra)}; allowed: {', '.join(keys)}"
        )


def _required(body: Body, key: str, kind: type) -> Any:
    value = body.get(key, _MISSING)
    if value is _MISSING:
        raise ClientInputError("missing_field", f"'{key}' is required")
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise ClientInputError("bad_type", f"'{key}' must be a {kind.__name__}")
    return value


def _opt(body: Body, key: str, kind: type) -> Any:
    return None if body.get(key) is None else _required(body, key, kind)


def _str(body: Body, key: str) -> str:
    value: str = _required(body, key, str)
    if not value:
        raise ClientInputError("bad_type", f"'{key}' must be a non-empty string")
    return value


def _number(body: Body, key: str, default: float | None = None) -> float:
    if default is not None and body.get(key) is None:
        return default
    value = body.get(key, _MISSING)
    if value is _MISSING:
        raise ClientInputError("missing_field", f"'{key}' is required")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ClientInputError("bad_type", f"'{key}' must be a number")
    return float(value)


def _int(body: Body, key: str, default: int | None = None) -> int:
    if default is not None and body.get(key) is None:
        return default
    value: int = _required(body, key, int)
    return value


def _opt_int(body: Body, key: str) -> int | None:
    value: int | None = _opt(body, key, int)
    return value


def _count(body: Body) -> int | None:
    return _opt_int(body, "count")


def _channel_json(ch: SimChannel) -> dict[str, Any]:
    return {
        "slug": ch.slug,
        "channel_id": ch.channel_id,
        "chatroom_id": ch.chatroom_id,
        "user_id": ch.user_id,
        "username": ch.username,
        "live": ch.livestream is not None,
    }


def endpoints_markdown() -> str:
    """The README's table of the control API (tests/sim/test_sim_http.py keeps them equal)."""

    def cell(text: str | None) -> str:
        return "" if text is None else "`" + text.replace("|", "\\|") + "`"

    rows = ["| endpoint | what | body | answer |", "|---|---|---|---|"]
    rows += [
        f"| `{e.method} {e.path}` | {e.summary} | {cell(e.body)} | "
        f"{cell(e.returns) if e.returns.startswith('{') else e.returns} |"
        for e in ENDPOINTS
    ]
    return "\n".join(rows) + "\n"
