"""Upstream ingest: how many Kick events per second one core turns into broadcast frames.

The path measured is the real one, with no network and no clients: Pusher frame text ->
``PusherClientProtocol.receive`` (outer JSON) -> ``Gateway.on_upstream_event`` (Kick's data
decoded once, alias dedupe, ``channel_name``) -> ``Namespace.emit`` (payload, Socket.IO packet,
Engine.IO prefix and WebSocket frame built once, recovery offset, recovery log). The room holds
one socket waiting to be recovered, so every frame is built and logged but written nowhere:
per-recipient costs belong to the fan-out benchmark (run.py), not here.

Frames are the simulator's realistic mix (about 97 % chat messages), on 20 chatrooms, each
event also arriving on the legacy alias of its chatroom (so dedupe works on every one).

    python bench/ingest.py [--events 200000] [--rooms 20]
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import time

import orjson

from kichat.http.server import Request
from kichat.kick.pusher.protocol import ChannelEvent, PusherClientProtocol
from kichat.relay import Gateway, Registry, RoomKey
from kichat.relay.gateway import _Active, _Channel
from kichat.sim.channels import SimChannel
from kichat.sim.traffic import CHAT_MESSAGE, EventFactory, Mix, make_chat
from kichat.sio import Server
from kichat.sio.connection import Connection


class _NoUpstream:
    async def subscribe(self, channel: str) -> None:
        return None

    async def unsubscribe(self, channel: str) -> None:
        return None


def make_frames(rooms: int, count: int, *, alias: bool, seed: int = 1) -> list[str]:
    """Pusher frames as Kick sends them (data double-encoded), the simulator's realistic mix,
    each on a chatroom's v2 channel followed by the same event on its legacy alias. (Stream
    events, 2 % of the mix, really come on channel.{id}; here every event goes through the
    chatroom path, which costs the same.)"""
    rng = random.Random(seed)
    factory = EventFactory(rng)
    mix = Mix("realistic", rng)
    channels = [
        SimChannel(f"chan{r}", 800000 + r, 700000 + r, 900000 + r, f"Chan{r}") for r in range(rooms)
    ]
    frames: list[str] = []
    while len(frames) < count:
        ch = rng.choice(channels)
        event = mix.pick()
        data = (
            make_chat(factory, ch, "message", None)
            if event == CHAT_MESSAGE
            else factory.make(event, ch).data
        )
        encoded = orjson.dumps(data).decode()
        names = [f"chatrooms.{ch.chatroom_id}.v2"] + (
            [f"chatrooms.{ch.chatroom_id}"] if alias else []
        )
        for name in names:
            frames.append(orjson.dumps({"event": event, "channel": name, "data": encoded}).decode())
    return frames[:count]


async def run(events: int, rooms: int, alias: bool) -> dict[str, float]:
    sio = Server()
    nsp = sio.of("/")
    registry = Registry()
    gateway = Gateway(
        _NoUpstream(), None, lambda e, p, r: nsp.emit(e, p, to=r), lambda k: True,
        channel_templates=(),
    )  # fmt: skip
    # Rooms as the relay leaves them once subscribed: routes in place, one member each (a socket
    # waiting for recovery: frames are built and logged, not written).
    request = Request("GET", "/socket.io/", {}, b"", "127.0.0.1")
    for r in range(rooms):
        key = RoomKey(700000 + r, f"chan{r}")
        registry.add(key, f"sid{r}")
        for name in (f"chatrooms.{key.chatroom_id}.v2", f"chatrooms.{key.chatroom_id}"):
            gateway._channels[name] = _Channel(f"chatroom:{key.chatroom_id}", {key})
            gateway._group_sizes[f"chatroom:{key.chatroom_id}"] = 2
        gateway._active[key] = _Active(None, [])  # type: ignore[arg-type]
        conn = Connection(sio, f"c{r}", request, "websocket")
        nsp._connect(conn, {})
        sock = conn.sockets["/"]
        nsp._accept(sock, conn)
        sock.join(key.room)
        sock.conn = None  # detached: in the room, nothing written
        conn.closed = True  # and its CONNECT reply is never flushed anywhere
    frames = make_frames(rooms, events, alias=alias)
    protocol = PusherClientProtocol(now=0.0)
    protocol.receive(
        '{"event":"pusher:connection_established","data":"{\\"socket_id\\":\\"1.1\\",\\"activity_timeout\\":120}"}',
        0.0,
    )
    on_event = gateway.on_upstream_event
    gc.collect()
    gc.disable()  # measure the work, not when the collector happens to run; re-enabled below
    cpu0 = time.process_time()
    wall0 = time.perf_counter()
    for text in frames:
        for item in protocol.receive(text, 1.0):
            if isinstance(item, ChannelEvent):
                on_event(item.channel, item.event, item.data)
    wall = time.perf_counter() - wall0
    cpu = time.process_time() - cpu0
    gc.enable()
    stats = gateway.stats
    assert stats.events_in == events, stats
    return {
        "frames": events,
        "broadcasts": sio.stats.broadcasts,
        "duplicates_dropped": stats.duplicates_dropped,
        "cpu_s": cpu,
        "wall_s": wall,
        "frames_per_cpu_s": events / cpu,
        "us_per_frame": cpu / events * 1e6,
        "us_per_broadcast": cpu / max(1, sio.stats.broadcasts) * 1e6,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--events", type=int, default=200_000, help="Pusher frames to feed")
    ap.add_argument("--rooms", type=int, default=20)
    ap.add_argument(
        "--no-alias",
        action="store_true",
        help="every frame a distinct event (no legacy-alias copies to drop)",
    )
    args = ap.parse_args()
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core, as the target says
    import uvloop

    result = uvloop.run(run(args.events, args.rooms, not args.no_alias))
    print(
        f"ingest: {result['frames']} Pusher frames ({result['broadcasts']} broadcasts, "
        f"{result['duplicates_dropped']} alias copies dropped) in {result['cpu_s']:.2f} s CPU: "
        f"{result['frames_per_cpu_s']:,.0f} frames/s, {result['us_per_frame']:.1f} us/frame, "
        f"{result['us_per_broadcast']:.1f} us per event broadcast"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
