"""Print a Kick chatroom's live chat from a kichat gateway, with python-socketio's client.

Install (the quotes matter in most shells; the extra's name is spelled with a hyphen):

    python3 -m venv .venv && .venv/bin/pip install "python-socketio[asyncio-client]"
    .venv/bin/python chat.py [URL] [CHANNEL] [CHATROOM_ID]

URL defaults to $KICHAT_URL or http://127.0.0.1:3000 (what `make demo` serves); CHANNEL and
CHATROOM_ID to xqc and 668. Chat goes to stdout, one line per message; status to stderr.

python-socketio's client does not do connection state recovery, and it passes every argument of
an event to its handler. The gateway appends a recovery offset (a string) to every event for
clients that recover, which a one-argument handler does not expect (TypeError). So this client
says ``auth={"recovery": False}``: the gateway then sends no offsets to it. (The alternative is
handlers that accept extra arguments: ``async def on_message(data, *_)``.) Without recovery, a
reconnection starts a new session: the ``connect`` handler subscribes again each time, and
events sent while the client was away are lost. kichat's own client (../python-kichat) recovers.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import socketio


async def main(url: str, channel_name: str, chatroom_id: str) -> None:
    sio = socketio.AsyncClient()  # reconnects by itself

    @sio.event
    async def connect() -> None:
        reply = await sio.call("subscribe", {"channelName": channel_name, "chatroomId": chatroom_id})
        if not reply["ok"]:
            print(f"subscribe refused: {reply['error']['code']}: {reply['error']['message']}",
                  file=sys.stderr)  # fmt: skip
            await sio.disconnect()
            return
        if "warning" in reply:
            print(f"warning: {reply['warning']['code']}: {reply['warning']['message']}",
                  file=sys.stderr)  # fmt: skip
        print(f"subscribed to {reply['channelName']} (chatroom {reply['chatroomId']})",
              file=sys.stderr)  # fmt: skip

    @sio.on("App\\Events\\ChatMessageEvent")
    async def on_message(data: dict[str, Any]) -> None:
        print(f"{data['channel_name']} | {data['sender']['username']}: {data['content']}",
              flush=True)  # fmt: skip

    @sio.on("App\\Events\\UserBannedEvent")
    async def on_ban(data: dict[str, Any]) -> None:
        print(f"{data['channel_name']} | {data['user']['username']} was banned by"
              f" {data['banned_by']['username']}", flush=True)  # fmt: skip

    await sio.connect(url, transports=["websocket"], auth={"recovery": False})
    await sio.wait()


if __name__ == "__main__":
    args = sys.argv[1:]
    url = args[0] if args else os.environ.get("KICHAT_URL", "http://127.0.0.1:3000")
    channel = args[1] if len(args) > 1 else "xqc"
    chatroom = args[2] if len(args) > 2 else "668"
    try:
        asyncio.run(main(url, channel, chatroom))
    except KeyboardInterrupt:
        pass
    except socketio.exceptions.ConnectionError as exc:
        sys.exit(f"chat.py: cannot connect to {url}: {exc}")
