"""Measure the hot path of the Pusher client: ``PusherClientProtocol.receive`` for one chat event.

Not a test (timings do not belong in assertions). Run::

    python tests/kick/pusher/measure_receive.py

It builds a ~700-byte ``App\\Events\\ChatMessageEvent`` frame the way Kick sends it (``data`` is a
JSON string) and prints the best per-call time of several repeats next to a bare ``orjson.loads``
of the same frame, which is the floor.
"""

from __future__ import annotations

import timeit

import orjson

from kichat.kick.pusher.protocol import PusherClientProtocol

MESSAGE = {
    "id": "5f0c2b1e-8a3d-4c55-9e7a-2b6d1f9c0a11",
    "chatroom_id": 4100123,
    "content": "gg [emote:37226:KEKW] " + "that play was absolutely unreal, " * 6,
    "type": "message",
    "created_at": "2026-03-02T19:04:11+00:00",
    "sender": {
        "id": 55012345,
        "username": "PixelMoth",
        "slug": "pixelmoth",
        "identity": {
            "color": "#75FD46",
            "badges": [{"type": "subscriber", "text": "Subscriber", "count": 4}],
        },
    },
    "metadata": {"message_ref": "1772478251093"},
}


def main() -> None:
    frame = orjson.dumps(
        {
            "event": "App\\Events\\ChatMessageEvent",
            "channel": "chatrooms.4100123.v2",
            "data": orjson.dumps(MESSAGE).decode(),
        }
    ).decode()
    proto = PusherClientProtocol(now=0.0)
    number = 100_000
    print(f"frame: {len(frame.encode())} bytes")
    for label, call in (
        ("orjson.loads(frame) (floor)", lambda: orjson.loads(frame)),
        ("PusherClientProtocol.receive", lambda: proto.receive(frame, 1.0)),
    ):
        best = min(timeit.repeat(call, number=number, repeat=15)) / number
        print(f"{label:32s} {best * 1e6:6.2f} us/event")


if __name__ == "__main__":
    main()
