"""The Kichat-compatible REST API.

* ``GET /api/v2/channels/{channelName}``: Kick's channel JSON, byte for byte (it holds ``id``,
  ``slug``, ``user``, ``livestream`` and ``chatroom.id``); Kick's 404 body for an unknown
  channel. Cached and single-flight in :class:`~kichat.kick.api.KickApi`.
* ``GET /api/v2/channels/{channelName}/messages``: recent chat, in the live
  ``ChatMessageEvent`` shape plus ``channel_name``, newest first.
* ``POST /api/v2/channels/followed`` and ``PUT /api/v2/user/livestreams``: the hosted API's
  user endpoints, forwarding only the caller's ``X-Kick-Cookie`` and ``Authorization``.

Errors are ``{"error": {"code", "message"}}``: 400 for a bad channel name (nothing is sent to
Kick), 502 when Kick's edge blocks us or answers badly, 504 when it does not answer in time.
"""

from __future__ import annotations

from typing import Final
from urllib.parse import unquote

import orjson

from kichat.errors import ChannelNotFound, ClientInputError, KickApiError
from kichat.http import Request, Response
from kichat.kick.api import KickApi
from kichat.kick.events import with_channel_name
from kichat.kick.names import parse_slug
from kichat.web.router import Route, Router

_JSON: Final = ("Content-Type", "application/json")
_MAX_SEGMENT: Final = 256


def slug_param(raw: str) -> str:
    """A channel name from a URL path segment: decoded, then validated like client input."""
    if len(raw) > _MAX_SEGMENT:
        raise ClientInputError("invalid_channel_name", "channelName is far too long")
    try:
        decoded = unquote(raw, errors="strict")
    except UnicodeDecodeError:
        raise ClientInputError("invalid_channel_name", "channelName is not valid UTF-8") from None
    return parse_slug(decoded)


def kick_error(exc: KickApiError) -> Response:
    return Response.error(exc.status, exc.code, exc.message)


class RestApi:
    def __init__(self, kick: KickApi) -> None:
        self.kick = kick

    def install(self, router: Router) -> None:
        channel = "/api/v2/channels/{channelName}"
        session = "(needs X-Kick-Cookie and Authorization)"
        for route in (
            Route("GET", channel, "channel", self.channel,
                  "Channel information (Kick's JSON, holds chatroom.id)", "channels"),
            Route("GET", channel + "/messages", "messages", self.messages,
                  "Recent chat messages in the live event shape", "channels"),
            Route("POST", "/api/v2/channels/followed", "followed", self.followed,
                  f"Get followed channels {session}", "user"),
            Route("PUT", "/api/v2/user/livestreams", "livestreams", self.livestreams,
                  f"Get user livestreams {session}", "user"),
        ):  # fmt: skip
            router.add(route)

    async def channel(self, request: Request, params: dict[str, str]) -> Response:
        try:
            slug = slug_param(params["channelName"])
            channel = await self.kick.channel(slug)
        except ClientInputError as exc:
            return Response.error(400, exc.code, exc.message)
        except ChannelNotFound as exc:
            body = orjson.dumps(exc.body) if exc.body is not None else None
            if body is None:
                return Response.error(404, exc.code, exc.message)
            return Response(404, body, [_JSON])
        except KickApiError as exc:
            return kick_error(exc)
        return Response(200, channel.body, [_JSON])

    async def messages(self, request: Request, params: dict[str, str]) -> Response:
        try:
            slug = slug_param(params["channelName"])
            channel = await self.kick.channel(slug)
            messages = await self.kick.messages(channel.id)
        except ClientInputError as exc:
            return Response.error(400, exc.code, exc.message)
        except KickApiError as exc:
            return kick_error(exc)
        shaped = [with_channel_name(m, slug) for m in messages]
        return Response.json(
            {"channelName": slug, "chatroomId": channel.chatroom_id, "messages": shaped}
        )

    async def followed(self, request: Request, params: dict[str, str]) -> Response:
        return await self._forward(request, "POST", "/api/v2/channels/followed")

    async def livestreams(self, request: Request, params: dict[str, str]) -> Response:
        return await self._forward(request, "PUT", "/api/v2/user/livestreams")

    async def _forward(self, request: Request, method: str, path: str) -> Response:
        headers: dict[str, str] = {
            name: request.headers[name]
            for name in ("x-kick-cookie", "authorization")
            if name in request.headers
        }
        if not headers:
            return Response.error(
                401,
                "unauthenticated",
                "pass your Kick session: X-Kick-Cookie and Authorization: Bearer <token>",
            )
        try:
            reply = await self.kick.forward(method, path, headers)
        except ClientInputError as exc:
            return Response.error(400, exc.code, exc.message)
        except KickApiError as exc:
            return kick_error(exc)
        out = [("Content-Type", reply.headers.get("content-type", "application/json"))]
        if "retry-after" in reply.headers:
            out.append(("Retry-After", reply.headers["retry-after"]))
        return Response(reply.status, reply.body, out)
