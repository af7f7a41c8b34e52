"""Cluster mode's publish path, measured: what one owner pushes through Redis, and at what cost.

    python bench/cluster.py                  # starts its own redis-server on a free port
    python bench/cluster.py --events 200000 --rate 0 --readers 2

Three parts, each printed as a table row (and as JSON with --json):

* ``publish``: one owner (a :class:`~kichat.broker.redis.RedisBroker` in this process) publishes
  ``--events`` chat-sized events (``--rate`` per second, 0 = as fast as it can) over ``--topics``
  feeds, while ``--readers`` reader nodes (separate processes, each a RedisBroker subscribed to
  every feed) receive them. Figures: events/s accepted, the owner's CPU per event, each reader's
  CPU per event, Redis's CPU per event (from ``INFO cpu``), and whether every reader got every
  event once, in order.
* ``receive``: the subscriber's cost per message, redis-py's ``PubSub.get_message`` against the
  hiredis protocol the broker uses (why the subscriber is our own, README's design notes).

Nothing here is asserted: run it on a quiet machine and record the output in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import resource
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from kichat.broker import Lease
from kichat.broker.redis import RedisBroker
from kichat.broker.redis.subscriber import open_subscriber
from kichat.relay.render import encode_event

CHAT = "App\\Events\\ChatMessageEvent"


def payload(i: int) -> bytes:
    """A chat message of the size Kick sends (about 400 bytes encoded)."""
    data = {
        "id": f"{i:08d}-0000-4000-8000-{secrets.token_hex(6)}",
        "chatroom_id": 668,
        "content": "hello chat, this is a message of ordinary length [emote:37226:KEKW]",
        "type": "message",
        "created_at": "2026-11-30T12:00:00+00:00",
        "sender": {
            "id": 123456,
            "username": "someone",
            "slug": "someone",
            "identity": {"color": "#FF9D00", "badges": [{"type": "subscriber", "count": 3}]},
        },
    }
    return encode_event(CHAT, data)


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Reader:
    def __init__(self) -> None:
        self.count = 0
        self.positions: list[int] = []
        self.done = asyncio.Event()
        self.expected = 0

    def on_publication(self, topic: str, position: int, payload: bytes) -> None:
        self.count += 1
        self.positions.append(position)
        if self.count >= self.expected:
            self.done.set()

    def on_gap(self, topics: frozenset[str]) -> None: ...
    def on_reset(self, epoch: str) -> None: ...
    def on_lease_lost(self, topic: str) -> None: ...
    def on_topic_released(self, topic: str) -> None: ...
    def on_session_taken(self, pid: str) -> None: ...
    def on_hand_over(self, topic: str) -> None: ...


def reader_process(url: str, prefix: str, topics: list[str], expected: int, conn: Any) -> None:
    async def run() -> dict[str, Any]:
        reader = Reader()
        reader.expected = expected
        broker = RedisBroker(url, node_id=f"r{os.getpid()}", prefix=prefix)
        await broker.start(reader)
        for topic in topics:
            await broker.subscribe(topic)
        conn.send("ready")
        started = cpu()
        await asyncio.wait_for(reader.done.wait(), 600)
        used = cpu() - started
        await broker.close()
        ordered = all(a < b for a, b in zip(reader.positions, reader.positions[1:], strict=False))
        return {"received": reader.count, "cpu": used, "in_order": ordered}

    conn.send(asyncio.run(run()))


async def publish_part(url: str, redis_port: int, args: argparse.Namespace) -> dict[str, Any]:
    prefix = f"bench{secrets.token_hex(2)}:"
    topics = [f"chatroom:{1000 + i}" for i in range(args.topics)]
    ctx = multiprocessing.get_context("spawn")
    readers = []
    for _ in range(args.readers):
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=reader_process, args=(url, prefix, topics, args.events, child))
        proc.start()
        readers.append((proc, parent))
    for _, pipe in readers:
        assert pipe.recv() == "ready"
    owner = RedisBroker(url, node_id="owner", prefix=prefix, outbox_limit=args.events + 1)
    await owner.start(Reader())
    leases: list[Lease] = await owner.acquire(topics)
    payloads = [payload(i) for i in range(1000)]
    admin = aioredis.Redis(port=redis_port)
    redis_cpu0 = await redis_cpu(admin)
    cpu0, t0 = cpu(), time.perf_counter()
    interval = 1 / args.rate if args.rate else 0.0
    for i in range(args.events):
        owner.publish(leases[i % len(leases)], payloads[i % 1000], key=f"k{i}")
        if interval and i % 100 == 99:
            await asyncio.sleep(max(0.0, t0 + (i + 1) * interval - time.perf_counter()))
        elif i % 512 == 511:
            await asyncio.sleep(0)  # let the flusher run, as the event loop would
    while owner.status().details["outbox"]:
        await asyncio.sleep(0.001)
    while owner.status().published < args.events:
        await asyncio.sleep(0.001)
    wall = time.perf_counter() - t0
    owner_cpu = cpu() - cpu0
    results = [pipe.recv() for _, pipe in readers]
    redis_used = await redis_cpu(admin) - redis_cpu0
    for proc, _ in readers:
        proc.join()
    await owner.close()
    await admin.aclose()
    n = args.events
    return {
        "events": n,
        "topics": args.topics,
        "events_per_s": round(n / wall),
        "owner_cpu_us_per_event": round(owner_cpu / n * 1e6, 2),
        "redis_cpu_us_per_event": round(redis_used / n * 1e6, 2),
        "reader_cpu_us_per_event": [round(r["cpu"] / n * 1e6, 2) for r in results],
        "every_reader_got_everything_in_order": all(
            r["received"] == n and r["in_order"] for r in results
        ),
    }


async def redis_cpu(admin: aioredis.Redis) -> float:
    info = await admin.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def flood_process(redis_port: int, channel: str, count: int) -> None:
    """Publish ``count`` messages from another process (its CPU is not the receiver's)."""

    async def run() -> None:
        publisher = aioredis.Redis(port=redis_port)
        message = b"%d|" % 1 + payload(0)
        for start in range(0, count, 1000):
            pipe = publisher.pipeline(transaction=False)
            for _ in range(min(1000, count - start)):
                pipe.publish(channel, message)
            await pipe.execute()
        await publisher.aclose()

    asyncio.run(run())


async def receive_part(url: str, redis_port: int, count: int) -> dict[str, Any]:
    """CPU per received message: redis-py's PubSub against our hiredis subscriber."""
    channel = "bench:recv"
    ctx = multiprocessing.get_context("spawn")

    async def flood() -> None:
        proc = ctx.Process(target=flood_process, args=(redis_port, channel, count))
        proc.start()
        await asyncio.get_running_loop().run_in_executor(None, proc.join)

    # redis-py
    sub = aioredis.Redis(port=redis_port)
    pubsub = sub.pubsub()
    await pubsub.subscribe(channel)
    await pubsub.get_message(timeout=1)
    flooding = asyncio.ensure_future(flood())
    got, c0 = 0, None
    while got < count:
        m = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
        if m is not None:
            if c0 is None:
                c0 = cpu()
            got += 1
    redis_py = (cpu() - (c0 or 0)) / count * 1e6
    await flooding
    await pubsub.aclose()
    await sub.aclose()
    # ours
    done = asyncio.get_running_loop().create_future()
    state = {"got": 0, "c0": 0.0}

    def on_message(ch: bytes, data: bytes) -> None:
        if state["got"] == 0:
            state["c0"] = cpu()
        state["got"] += 1
        if state["got"] == count and not done.done():
            done.set_result(None)

    proto = await open_subscriber({"host": "127.0.0.1", "port": redis_port}, on_message, 5)
    await asyncio.gather(*proto.subscribe(channel.encode()))
    flooding = asyncio.ensure_future(flood())
    await done
    ours = (cpu() - state["c0"]) / count * 1e6
    await flooding
    proto.close()
    return {
        "messages": count,
        "redis_py_us": round(redis_py, 2),
        "hiredis_protocol_us": round(ours, 2),
    }


def start_redis() -> tuple[subprocess.Popen[bytes], int, str]:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server is not installed (apt-get install redis-server)")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    workdir = tempfile.mkdtemp(prefix="kichat-bench-redis-")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", workdir],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    for _ in range(200):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            time.sleep(0.02)
    return proc, port, workdir


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    proc, port, workdir = start_redis()
    url = f"redis://127.0.0.1:{port}/0"
    try:
        out: dict[str, Any] = {"publish": await publish_part(url, port, args)}
        out["receive"] = await receive_part(url, port, args.receive)
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--events", type=int, default=100_000, help="events the owner publishes")
    p.add_argument("--rate", type=float, default=0.0, help="events/s (0: as fast as possible)")
    p.add_argument("--topics", type=int, default=20, help="feeds the events are spread over")
    p.add_argument("--readers", type=int, default=1, help="reader nodes (processes)")
    p.add_argument("--receive", type=int, default=50_000, help="messages for the receive part")
    p.add_argument("--json", type=Path, help="also write the figures to this file")
    args = p.parse_args()
    try:
        import uvloop

        result = uvloop.run(main_async(args))
    except ImportError:
        result = asyncio.run(main_async(args))
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
