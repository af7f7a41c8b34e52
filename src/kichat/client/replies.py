"""The gateway's replies, as values and errors (pure).

``subscribe`` replies are ``{ok: true, channelName, chatroomId, streamEvents, warning?}`` or
``{ok: false, channelName?, chatroomId?, error: {code, message}}`` (README, "Replies and error
codes"); a refused connection is a CONNECT_ERROR ``{message, data: {code, ...}}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kichat.client.session import Refused
from kichat.errors import ConnectRejected, SubscribeRefused

__all__ = ["GatewayWarning", "Subscribed", "refusal", "rejected", "subscribed"]


@dataclass(frozen=True, slots=True)
class GatewayWarning:
    """Chat works, something else does not (``stream_events_unavailable``, ...)."""

    code: str
    message: str


@dataclass(frozen=True, slots=True)
class Subscribed:
    """The gateway's reply to a successful ``subscribe``."""

    channel_name: str
    chatroom_id: str
    stream_events: bool  # whether stream events (LivestreamUpdated, ...) will arrive too
    warning: GatewayWarning | None


def subscribed(reply: Any, payload: Mapping[str, Any]) -> Subscribed:
    if not isinstance(reply, Mapping) or reply.get("ok") is not True:
        raise refusal(reply, payload)
    warning = reply.get("warning")
    return Subscribed(
        channel_name=str(reply.get("channelName", payload["channelName"])),
        chatroom_id=str(reply.get("chatroomId", payload["chatroomId"])),
        stream_events=reply.get("streamEvents") is True,
        warning=(
            GatewayWarning(str(warning.get("code", "")), str(warning.get("message", "")))
            if isinstance(warning, Mapping)
            else None
        ),
    )


def refusal(reply: Any, payload: Mapping[str, Any]) -> SubscribeRefused:
    error = reply.get("error") if isinstance(reply, Mapping) else None
    if not isinstance(error, Mapping):
        error = {"code": "bad_reply", "message": f"the gateway answered {reply!r}"}
    return SubscribeRefused(
        str(error.get("code", "refused")),
        str(error.get("message", "")),
        channel_name=str(payload.get("channelName")),
        chatroom_id=str(payload.get("chatroomId")),
    )


def rejected(refused: Refused) -> ConnectRejected:
    data = refused.data
    code = data.get("code") if isinstance(data, Mapping) else None
    return ConnectRejected(str(code or "refused"), refused.message, data)
