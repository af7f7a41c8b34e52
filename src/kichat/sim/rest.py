"""Kick's REST shapes (wire.md §4.1, §4.3) and the chat history behind them. Pure: no I/O."""

from __future__ import annotations

import copy
import re
import time
from collections import deque
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import unquote

import orjson

from kichat.sim.channels import SimChannel
from kichat.sim.traffic import CHAT_MESSAGE, rest_channel_template

PIN_CREATED: Final = "App\\Events\\PinnedMessageCreatedEvent"
PIN_DELETED: Final = "App\\Events\\PinnedMessageDeletedEvent"

_CHANNEL_PATH: Final = re.compile(r"/api/v2/channels/([^/]+)")
_MESSAGES_PATH: Final = re.compile(r"/api/v2/channels/(\d+)/messages")
_ROOM_CHANNEL: Final = re.compile(r"chatrooms\.(\d+)\.v2")
_RECORDED: Final = frozenset({CHAT_MESSAGE, PIN_CREATED, PIN_DELETED})


def route(path: str) -> tuple[str, str] | None:
    """``("messages", "<channel id>")``, ``("channel", "<slug>")`` or None for other paths."""
    if m := _MESSAGES_PATH.fullmatch(path):
        return "messages", m.group(1)
    if m := _CHANNEL_PATH.fullmatch(path):
        return "channel", unquote(m.group(1)).lower()
    return None


# -- bodies -------------------------------------------------------------------------------------


def channel_body(ch: SimChannel) -> dict[str, Any]:
    """``GET /api/v2/channels/{slug}``: Kick's top-level channel object."""
    body = copy.deepcopy(rest_channel_template())
    body["id"] = ch.channel_id
    body["user_id"] = ch.user_id
    body["slug"] = ch.slug
    body["user"]["id"] = ch.user_id
    body["user"]["username"] = ch.username
    body["livestream"] = copy.deepcopy(ch.livestream)
    room = body["chatroom"]
    room["id"] = ch.chatroom_id
    room["channel_id"] = room["chatable_id"] = ch.channel_id
    return body


def not_found_body() -> dict[str, Any]:
    # Illustrative: Laravel's default body for a missing model; Kick's exact 404 text is unknown.
    return {"message": "No query results for model [App\\Models\\Channel]."}


def blocked_body(reference: str) -> dict[str, Any]:
    """The body of Kick's edge when it blocks a client (wire.md §4.4, DD #225)."""
    return {"error": "Request blocked by security policy.", "reference": reference}


def server_error_body() -> dict[str, Any]:
    # Illustrative: Laravel's production 500 body.
    return {"message": "Server Error"}


def messages_not_found_body() -> dict[str, Any]:
    # Illustrative: the history endpoint's status wrapper with an error.
    return {"status": {"error": True, "code": 404, "message": "Channel not found"}, "data": None}


def _history_time(value: object) -> object:
    """Pusher's ``…+00:00`` seconds become the history endpoint's ``…000000Z`` (wire.md §4.3)."""
    if not isinstance(value, str):
        return value
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return value
    return parsed.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def history_item(msg: dict[str, Any]) -> dict[str, Any]:
    """A Pusher ChatMessageEvent payload in the history shape: ``chat_id``, ``user_id``,
    ``metadata`` as a JSON *string* (or null), ``created_at`` ending in ``Z``."""
    sender = msg.get("sender")
    sender = sender if isinstance(sender, dict) else {}
    metadata = msg.get("metadata")
    return {
        "id": msg.get("id"),
        "chat_id": msg.get("chatroom_id"),
        "user_id": sender.get("id"),
        "content": msg.get("content"),
        "type": msg.get("type"),
        "metadata": None if metadata is None else orjson.dumps(metadata).decode(),
        "created_at": _history_time(msg.get("created_at")),
        "sender": sender,
    }


# -- history ------------------------------------------------------------------------------------


class ChatHistory:
    """The last ``size`` ChatMessageEvents and the current pin of each chatroom.

    Fed by every publish on ``chatrooms.{id}.v2``; stores the encoded data as published (one
    bytes object, no copy, immune to later mutation) and decodes only when the REST endpoint asks.
    """

    def __init__(self, size: int = 50) -> None:
        self.size = size
        self._rooms: dict[int, deque[bytes]] = {}
        self._pins: dict[int, tuple[bytes, float]] = {}
        self._room_of: dict[str, int | None] = {}

    def on_publish(self, channel: str, event: str, data_json: bytes) -> None:
        if event not in _RECORDED:
            return
        room = self._room_of.get(channel, -1)
        if room == -1:
            m = _ROOM_CHANNEL.fullmatch(channel)
            room = int(m.group(1)) if m else None
            if len(self._room_of) > 10_000:
                self._room_of.clear()
            self._room_of[channel] = room
        if room is None:
            return
        if event == CHAT_MESSAGE:
            queue = self._rooms.get(room)
            if queue is None:
                queue = self._rooms[room] = deque(maxlen=self.size)
            queue.append(data_json)
        elif event == PIN_CREATED:
            self._pins[room] = (data_json, time.time())
        else:
            self._pins.pop(room, None)

    def latest(self, chatroom_id: int) -> dict[str, Any] | None:
        queue = self._rooms.get(chatroom_id)
        if not queue:
            return None
        msg = orjson.loads(queue[-1])
        return msg if isinstance(msg, dict) else None

    def count(self, chatroom_id: int) -> int:
        return len(self._rooms.get(chatroom_id, ()))

    def messages_body(self, chatroom_id: int) -> dict[str, Any]:
        """``GET /api/v2/channels/{channelId}/messages``, newest first. Paging parameters
        (``next``, ``start_time``) are ignored: the whole bounded history is one page."""
        items = []
        for raw in reversed(self._rooms.get(chatroom_id, ())):
            msg = orjson.loads(raw)
            # A raw publish that is not Kick-shaped has no place in Kick's history.
            if isinstance(msg, dict) and isinstance(msg.get("id"), str):
                items.append(history_item(msg))
        oldest = items[-1]["created_at"] if items else None
        return {
            "status": {"error": False, "code": 200, "message": "SUCCESS"},
            "data": {
                "messages": items,
                "cursor": _cursor(oldest),
                "pinned_message": self._pinned(chatroom_id),
            },
        }

    def _pinned(self, chatroom_id: int) -> dict[str, Any] | None:
        pin = self._pins.get(chatroom_id)
        if pin is None:
            return None
        data = orjson.loads(pin[0])
        if not isinstance(data, dict) or not isinstance(data.get("message"), dict):
            return None
        try:
            duration = int(data.get("duration", 0))
        except (TypeError, ValueError):
            duration = 0
        finish = datetime.fromtimestamp(pin[1] + duration, UTC)
        if duration and finish < datetime.now(UTC):
            del self._pins[chatroom_id]
            return None
        return {
            "message": history_item(data["message"]),
            "finish_at": finish.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "duration": duration,
        }


def _cursor(oldest: object) -> str:
    """Kick's cursor looks like epoch milliseconds (fixtures/rest/messages.json)."""
    if isinstance(oldest, str):
        try:
            return str(int(datetime.fromisoformat(oldest).timestamp() * 1000))
        except ValueError:
            pass
    return str(time.time_ns() // 1_000_000)
