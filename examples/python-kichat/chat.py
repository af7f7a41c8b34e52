"""Print a Kick chatroom's live chat from a kichat gateway, with kichat's own Python client.

Install (kichat is not on PyPI; from a clone of the repository):

    python3 -m venv .venv && .venv/bin/pip install .     # or `make demo`, which does that too
    .venv/bin/python examples/python-kichat/chat.py [URL] [CHANNEL] [CHATROOM_ID]

URL defaults to $KICHAT_URL or http://127.0.0.1:3000 (what `make demo` serves); CHANNEL and
CHATROOM_ID to xqc and 668. Chat goes to stdout, one line per message; status to stderr.

The client reconnects by itself, recovers the session after a network blip (nothing lost or
repeated) and subscribes again after a gateway restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys

from kichat.client import Client, ClientError


async def main(url: str, channel_name: str, chatroom_id: str) -> None:
    async with Client(url) as client:
        reply = await client.subscribe(channel_name, chatroom_id)
        if reply.warning is not None:
            print(f"warning: {reply.warning.code}: {reply.warning.message}", file=sys.stderr)
        print(f"subscribed to {reply.channel_name} (chatroom {reply.chatroom_id})", file=sys.stderr)
        async for event in client:
            if (chat := event.chat_message()) is not None:
                print(f"{chat.channel_name} | {chat.sender.username}: {chat.content}", flush=True)
            elif (ban := event.user_banned()) is not None:
                print(f"{ban.channel_name} | {ban.user.username} was banned by"
                      f" {ban.banned_by.username}", flush=True)  # fmt: skip


if __name__ == "__main__":
    args = sys.argv[1:]
    url = args[0] if args else os.environ.get("KICHAT_URL", "http://127.0.0.1:3000")
    channel = args[1] if len(args) > 1 else "xqc"
    chatroom = args[2] if len(args) > 2 else "668"
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(main(url, channel, chatroom))
    except ClientError as exc:  # unreachable, refused, subscription refused
        sys.exit(f"chat.py: {exc}")
