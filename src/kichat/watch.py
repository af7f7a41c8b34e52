"""``kichat watch``: print a chatroom's live events from a running gateway, in the terminal.

Built on :mod:`kichat.client`, so it rides out network blips and gateway restarts the way any
program using the client does, and says so as it happens. It is what ``kichat demo`` shows, and
a quick check an operator can run against any kichat.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any, TextIO

from kichat.client import Client, ClientError, Event, Subscribed, SubscribeRefused

_COLORS = ("\033[36m", "\033[33m", "\033[35m", "\033[32m", "\033[34m", "\033[91m")
_RESET = "\033[0m"


def format_event(name: str, data: Any, *, color: bool) -> str:
    """One readable line per event: chat messages as ``[channel] user: text``."""
    event = Event(name, data)
    channel = event.channel_name or "?"
    chat = event.chat_message()
    if chat is not None:
        user = chat.sender.username or "?"
        if color:
            tint = _COLORS[sum(map(ord, user)) % len(_COLORS)]
            user = f"{tint}{user}{_RESET}"
        return f"[{channel}] {user}: {chat.content}"
    detail = json.dumps(data, ensure_ascii=False)
    if len(detail) > 160:
        detail = detail[:157] + "..."
    return f"[{channel}] <{event.short_name}> {detail}"


def format_subscribed(reply: Subscribed) -> str:
    """The answer to the subscription, warning included: a wrong chatroom id gets chat from
    another channel under the name asked for, and the gateway's warning is what says so."""
    head = f"subscribed to {reply.channel_name} (chatroom {reply.chatroom_id})"
    if reply.warning is None:
        return f"{head}: ok"
    return f"{head} with a warning: {reply.warning.code}: {reply.warning.message}"


def _format_reply(data: Any) -> str:
    """An ``error`` or ``warning`` event (a re-subscription's reply) as one line."""
    detail = data.get("error") or data.get("warning") if isinstance(data, dict) else None
    if isinstance(detail, dict):
        return f"{detail.get('code')}: {detail.get('message')}"
    return json.dumps(data, ensure_ascii=False)


async def watch(
    base_url: str,
    channel_name: str,
    chatroom_id: str,
    *,
    out: TextIO = sys.stdout,
    token: str | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Subscribe to one chatroom and print its events until ``stop`` is set. Raises a
    :class:`~kichat.errors.ClientError` when the gateway cannot be reached at first, refuses
    the connection or the subscription, or when re-subscribing after a restart fails."""
    session = asyncio.ensure_future(_session(base_url, channel_name, chatroom_id, out, token))
    if stop is None:
        await session
        return
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({session, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        session.cancel()
    if session.done() and not session.cancelled():
        session.result()  # re-raise what ended the session


async def _session(
    base_url: str, channel_name: str, chatroom_id: str, out: TextIO, token: str | None
) -> None:
    def say(line: str) -> None:
        print(line, file=out, flush=True)

    color = out.isatty()
    try:
        client = Client(base_url, token=token, lifecycle_events=True)
    except ValueError as exc:
        raise ClientError(str(exc)) from None
    async with client:
        say(format_subscribed(await client.subscribe(channel_name, chatroom_id)))
        connects = 0
        async for event in client:
            name, data = event.name, event.data
            if name == "connect":
                connects += 1
                if connects > 1 and data["recovered"]:
                    say("reconnected: session recovered, no event missed")
                elif connects > 1:
                    say(
                        "reconnected with a new session (the gateway restarted?): subscribing again"
                    )
            elif name == "disconnect":
                say(f"connection lost ({data['reason']}); reconnecting")
            elif name == "warning":
                say(f"warning: {_format_reply(data)}")
            elif name == "error":
                problem = data.get("error") if isinstance(data, dict) else None
                problem = problem if isinstance(problem, dict) else {}
                raise SubscribeRefused(
                    str(problem.get("code", "refused")),
                    f"subscribing again after a reconnection failed: {problem.get('message')}",
                    channel_name=channel_name,
                    chatroom_id=chatroom_id,
                )
            else:
                say(format_event(name, data, color=color))
