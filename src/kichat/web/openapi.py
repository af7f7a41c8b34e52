"""The OpenAPI 3.1 description of the REST API, built from the routes themselves.

The Socket.IO stream is not expressible in OpenAPI; it is described in prose in
``info.description`` (and in the README).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from kichat import __version__
from kichat.kick.events import KICHAT_DOCUMENTED_EVENTS
from kichat.kick.names import MAX_SLUG_LENGTH

if TYPE_CHECKING:
    from collections.abc import Sequence

    from kichat.config import Settings
    from kichat.web.router import Route

_ERROR: Final = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
        }
    },
}
_ANY_OBJECT: Final = {"type": "object"}
_CHANNEL: Final = {
    "type": "object",
    "description": "Kick's channel JSON, passed through unchanged.",
    "required": ["id", "slug", "chatroom"],
    "properties": {
        "id": {"type": "integer", "description": "The channel id (not the chatroom id)."},
        "slug": {"type": "string"},
        "user": {"type": ["object", "null"]},
        "livestream": {"type": ["object", "null"]},
        "chatroom": {
            "type": "object",
            "required": ["id"],
            "properties": {"id": {"type": "integer", "description": "Pass this as chatroomId."}},
        },
    },
}
_MESSAGES: Final = {
    "type": "object",
    "required": ["channelName", "chatroomId", "messages"],
    "properties": {
        "channelName": {"type": "string"},
        "chatroomId": {"type": "integer"},
        "messages": {
            "type": "array",
            "description": "Newest first, shaped like App\\Events\\ChatMessageEvent data.",
            "items": {
                "type": "object",
                "required": ["id", "content", "channel_name"],
                "properties": {
                    "id": {"type": "string"},
                    "chatroom_id": {"type": "integer"},
                    "content": {"type": "string"},
                    "type": {"type": "string"},
                    "created_at": {"type": "string"},
                    "sender": {"type": "object"},
                    "metadata": {"type": "object"},
                    "channel_name": {"type": "string"},
                },
            },
        },
    },
}
_CHANNEL_NAME: Final = {
    "name": "channelName",
    "in": "path",
    "required": True,
    "description": "A Kick channel slug, e.g. xqc (1-64 of a-z, 0-9, '_' and '-').",
    "schema": {
        "type": "string",
        # What kichat.kick.names.parse_slug accepts; anything else is a 400.
        "pattern": f"^[A-Za-z0-9][A-Za-z0-9_-]{{0,{MAX_SLUG_LENGTH - 1}}}$",
        "minLength": 1,
        "maxLength": MAX_SLUG_LENGTH,
        "examples": ["xqc"],
    },
}
_SOCKET_IO: Final = f"""
kichat turns kick.com's Pusher chat into a Socket.IO v4 stream.

**Socket.IO** at `/socket.io/` (transports `websocket` and `polling`). After connecting, emit
`subscribe` with `{{"channelName": "xqc", "chatroomId": "668"}}` (the chatroom id is
`chatroom.id` of `GET /api/v2/channels/{{channelName}}`); `unsubscribe` takes the same payload.
Pass an acknowledgement callback to get `{{"ok": true, ...}}` or `{{"ok": false, "error":
{{"code", "message"}}}}`; without one, failures arrive as an `error` event.

The server emits every Kick event under Kick's exact name, with Kick's data plus
`channel_name`: {", ".join(f"`{e}`" for e in KICHAT_DOCUMENTED_EVENTS)}, and every other event
Kick sends (including names without the `App\\Events\\` prefix).

Connection state recovery is on: a client that reconnects within the recovery window gets
every event it missed. Clients that pass every argument to handlers (python-socketio) may
connect with `auth: {{"recovery": false}}` to receive no offset argument.
"""


def _responses(route_name: str, ok: dict[str, Any] | None) -> dict[str, Any]:
    def json(schema: dict[str, Any], description: str) -> dict[str, Any]:
        return {"description": description, "content": {"application/json": {"schema": schema}}}

    responses: dict[str, Any] = {}
    if ok is not None:
        responses["200"] = json(ok, "Success")
    if route_name in ("channel", "messages"):
        responses["400"] = json(_ERROR, "Invalid channel name (nothing was sent to Kick)")
        responses["404"] = json(_ANY_OBJECT, "Unknown channel (Kick's own JSON body)")
        responses["502"] = json(_ERROR, "Kick's edge blocked the request, or Kick failed")
        responses["504"] = json(_ERROR, "Kick did not answer in time")
    if route_name in ("followed", "livestreams"):
        responses["default"] = {
            "description": "Kick's answer, passed through (any status)",
            "content": {"application/json": {"schema": {}}},
        }
        responses["401"] = json(_ERROR, "No Kick session was passed (or a bad API key)")
    responses["429"] = json(_ERROR, "Rate limited (see Retry-After)")
    return responses


def _access(operation: dict[str, Any], route: Route, *, api_keys: bool) -> None:
    """What the front door answers before a handler runs (kichat.web.frontend): 429 and, when
    API keys are configured, 401, on rate-limited routes only; probes need no key."""
    responses = operation["responses"]
    if not route.limited:
        responses.pop("429", None)
        if api_keys:
            operation["security"] = []
        return
    if api_keys:
        responses.setdefault(
            "401",
            {
                "description": "A missing or wrong API key",
                "content": {"application/json": {"schema": _ERROR}},
            },
        )
        if route.name in ("followed", "livestreams"):
            # Authorization carries the caller's Kick session here: only X-API-Key works.
            operation["security"] = [{"apiKey": []}]


_OK_SCHEMAS: Final[dict[str, dict[str, Any] | None]] = {
    "channel": _CHANNEL,
    "messages": _MESSAGES,
    "followed": None,
    "livestreams": None,
    "healthz": {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"const": "ok"}},
    },
    "readyz": {"type": "object", "required": ["status"]},
    "stats": _ANY_OBJECT,
    "routes": {
        "type": "array",
        "items": {
            "type": "object",
            "required": ["path", "method", "description", "category"],
            "properties": {
                "path": {"type": "string"},
                "method": {"type": "string"},
                "description": {"type": "string"},
                "category": {"type": "string"},
            },
        },
    },
    "openapi": _ANY_OBJECT,
}


def document(routes: Sequence[Route], settings: Settings) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        if not (route.public and route.openapi):
            continue
        operation: dict[str, Any] = {
            "operationId": route.name,
            "summary": route.summary,
            "tags": [route.category] if route.category else [],
        }
        if "{channelName}" in route.pattern:
            operation["parameters"] = [_CHANNEL_NAME]
        if route.name == "metrics":
            operation["responses"] = {
                "200": {
                    "description": "Prometheus text format",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            }
        else:
            operation["responses"] = _responses(
                route.name, _OK_SCHEMAS.get(route.name, _ANY_OBJECT)
            )
            if route.name == "readyz":
                operation["responses"]["503"] = {
                    "description": "Not ready; reasons listed",
                    "content": {
                        "application/json": {
                            "schema": {"type": "object", "required": ["status", "reasons"]}
                        }
                    },
                }
            if route.name in ("followed", "livestreams"):
                operation["parameters"] = [
                    {"name": "X-Kick-Cookie", "in": "header", "schema": {"type": "string"}},
                    {"name": "Authorization", "in": "header", "schema": {"type": "string"}},
                ]
        _access(operation, route, api_keys=bool(settings.limits.api_keys))
        paths.setdefault(route.pattern, {})[route.method.lower()] = operation
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "kichat", "version": __version__, "description": _SOCKET_IO.strip()},
        "paths": paths,
    }
    if settings.limits.api_keys:
        doc["components"] = {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            }
        }
        doc["security"] = [{"bearer": []}, {"apiKey": []}]
    return doc
