"""The single-process broker: the default, with nothing to install or run.

Everything the seam promises holds trivially in one process: publications are delivered
synchronously from :meth:`MemoryBroker.publish` (no extra hop on the hot path), this node owns
every topic it asks for, and sessions live in a dictionary. The history is what the recovery log
always was: per topic, bounded by age (``window``) and by bytes (``max_bytes``) for all topics
together; each topic remembers the highest position it evicted, so a read that would need an
evicted publication fails instead of skipping it.
"""

from __future__ import annotations

import asyncio
import bisect
import heapq
import secrets
import time
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from operator import attrgetter

from kichat.broker.base import (
    Broker,
    BrokerStatus,
    Handler,
    History,
    Lease,
    Publication,
    TopicState,
)

# How many recent dedupe keys a topic remembers, to compare a publication's key with (a takeover
# overlap lasts a fraction of a second; chat rarely sends more than a few hundred messages in that).
DEDUPE_SCAN = 500


class _TopicLog:
    """One topic's recent publications, with no Python object per publication: payloads are
    appended to one buffer, positions, times and offsets to typed arrays. 20,000 messages kept
    as objects (an entry, its payload, its position and time) cost twice their payload bytes,
    and, interleaved in the allocator's arenas with a burst's short-lived objects, kept those
    arenas from being returned long after the burst. Evicted entries are cut off the front
    once they are at least half of the log (amortised O(1) per publication)."""

    __slots__ = ("alive", "ats", "base", "buf", "evicted_through", "head", "keys", "offsets",
                 "positions", "topic")  # fmt: skip

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.evicted_through = 0
        self.alive = True
        self.keys: deque[str] = deque(maxlen=DEDUPE_SCAN)  # recent dedupe keys
        self._reset()

    def _reset(self) -> None:
        self.positions = array("q")
        self.ats = array("d")
        self.offsets = array("q", (0,))  # entry i is buf[offsets[i] - base:offsets[i + 1] - base]
        self.buf = bytearray()
        self.base = 0  # the offset of buf[0]
        self.head = 0  # index of the first entry not evicted

    def __len__(self) -> int:
        return len(self.positions) - self.head

    def append(self, position: int, at: float, payload: bytes) -> None:
        self.positions.append(position)
        self.ats.append(at)
        self.buf += payload
        self.offsets.append(self.offsets[-1] + len(payload))

    def oldest_at(self) -> float:
        return self.ats[self.head]

    def evict_oldest(self) -> int:
        """Drop the oldest entry; the bytes it held."""
        head = self.head
        size = self.offsets[head + 1] - self.offsets[head]
        self.evicted_through = self.positions[head]
        self.head = head = head + 1
        if head == len(self.positions):
            self._reset()
        elif head >= 64 and head * 2 >= len(self.positions):
            cut = self.offsets[head] - self.base
            self.buf = self.buf[cut:]  # a copy: the old buffer is freed whole
            self.base += cut
            del self.positions[:head], self.ats[:head], self.offsets[:head]
            self.head = 0
        return size

    def after(self, position: int) -> list[Publication]:
        """The publications after ``position``, oldest first."""
        first = bisect.bisect_right(self.positions, position, self.head)
        topic, positions, offsets, base = self.topic, self.positions, self.offsets, self.base
        with memoryview(self.buf) as buf:
            return [Publication(topic, positions[i],
                                bytes(buf[offsets[i] - base:offsets[i + 1] - base]))
                    for i in range(first, len(positions))]  # fmt: skip

    def clear(self) -> int:
        """Forget everything; the bytes it held."""
        held = self.offsets[-1] - self.offsets[self.head]
        self._reset()
        self.keys.clear()
        return held


class MemoryBroker(Broker):
    def __init__(
        self,
        *,
        window: float = 120.0,
        max_bytes: int = 64 * 1024 * 1024,
        node_id: str = "local",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.node_id = node_id
        self.window = window
        self.max_bytes = max_bytes
        self.clock = clock
        self._epoch = secrets.token_hex(4)
        self._position = 0
        self.bytes = 0
        self._handler: Handler | None = None
        # Which topic each publication went to, oldest first: what trimming walks.
        self._all: deque[_TopicLog] = deque()
        self._logs: dict[str, _TopicLog] = {}
        self._subscribed: set[str] = set()
        self._leases: dict[str, Lease] = {}
        self._tokens = 0
        self._states: dict[str, TopicState] = {}
        self._state_waiters: dict[str, list[asyncio.Future[TopicState]]] = {}
        self._sessions: dict[str, tuple[bytes, float | None]] = {}
        self._status = BrokerStatus(backend="memory", node_id=node_id, epoch=self._epoch)
        self._sweeper: asyncio.Task[None] | None = None

    @property
    def epoch(self) -> str:
        return self._epoch

    @property
    def position(self) -> int:
        return self._position

    async def start(self, handler: Handler) -> None:
        self._handler = handler
        if self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep())

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        self._leases.clear()

    async def _sweep(self) -> None:
        period = max(0.05, min(1.0, self.window / 4))
        while True:
            await asyncio.sleep(period)
            self.expire()

    def expire(self) -> None:
        """Drop history older than the window and sessions past their time."""
        now = self.clock()
        self._trim(now)
        for pid in [p for p, (_, until) in self._sessions.items() if until and until < now]:
            del self._sessions[pid]

    # -- topics ------------------------------------------------------------------------------

    async def subscribe(self, topic: str) -> int:
        self._subscribed.add(topic)
        return self._position

    async def unsubscribe(self, topic: str) -> None:
        self._subscribed.discard(topic)

    def publish(
        self, lease: Lease, payload: bytes, *, key: str | None = None, dedupe: bool = False
    ) -> None:
        topic = lease.topic
        status = self._status
        current = self._leases.get(topic)
        if current is None or current.token != lease.token:  # the fence
            status.publish_rejected += 1
            if self._handler is not None:
                self._handler.on_lease_lost(topic)
            return
        log = self._logs.get(topic)
        if log is None:
            log = self._logs[topic] = _TopicLog(topic)
        elif dedupe and key is not None and key in log.keys:
            status.publish_rejected += 1
            return
        self._position += 1
        position = self._position
        now = self.clock()
        log.append(position, now, payload)
        if key is not None:
            log.keys.append(key)
        self._all.append(log)
        self.bytes += len(payload)
        self._trim(now)
        status.published += 1
        if topic in self._subscribed and self._handler is not None:
            status.delivered += 1
            self._handler.on_publication(topic, position, payload)

    def _trim(self, now: float) -> None:
        horizon = now - self.window
        logs = self._all
        while logs:
            log = logs[0]
            if log.alive and log.oldest_at() >= horizon and self.bytes <= self.max_bytes:
                break
            logs.popleft()
            if log.alive:  # a dropped topic's bytes were accounted for when it was dropped
                self.bytes -= log.evict_oldest()

    def drop_history(self, topic: str) -> None:
        """Forget a topic's history (no session can need it any more)."""
        log = self._logs.pop(topic, None)
        if log is None:
            return
        log.alive = False
        self.bytes -= log.clear()

    async def history(self, since: Mapping[str, int]) -> History | None:
        return self.read_history(since)

    def read_history(self, since: Mapping[str, int]) -> History | None:
        """:meth:`history`, synchronously (the memory broker never waits)."""
        streams: list[list[Publication]] = []
        for topic, after in since.items():
            if after > self._position:
                return None
            log = self._logs.get(topic)
            if log is None:
                continue
            if log.evicted_through > after:
                return None
            tail = log.after(after)
            if tail:
                streams.append(tail)
        if len(streams) > 1:
            return History(list(heapq.merge(*streams, key=attrgetter("position"))), self._position)
        return History(streams[0] if streams else [], self._position)

    # -- ownership ---------------------------------------------------------------------------

    async def acquire(self, topics: Iterable[str]) -> list[Lease]:
        taken = []
        for topic in topics:
            if topic in self._leases:
                continue
            self._states.pop(topic, None)
            self._tokens += 1
            lease = self._leases[topic] = Lease(topic, self._tokens)
            taken.append(lease)
        return taken

    async def release(self, lease: Lease) -> None:
        current = self._leases.get(lease.topic)
        if current is not None and current.token == lease.token:
            del self._leases[lease.topic]
            state = self._states.get(lease.topic)
            if state is not None and state.live:  # a failure stays readable for late waiters
                del self._states[lease.topic]

    def revoke(self, topic: str) -> None:
        """Take a lease away from this node (what a fence does in a cluster; for tests)."""
        self._leases.pop(topic, None)
        self._states.pop(topic, None)

    @property
    def leases(self) -> Mapping[str, Lease]:
        return self._leases

    async def known(self, topic: str, keys: Iterable[str]) -> set[str]:
        log = self._logs.get(topic)
        if log is None:
            return set()
        recent = set(log.keys)
        return {k for k in keys if k in recent}

    async def hand_over(self, lease: Lease) -> bool:
        return False  # nobody else to hand over to

    async def take_over(self, topic: str) -> Lease | None:
        return None

    async def announce(self, lease: Lease, state: TopicState) -> None:
        current = self._leases.get(lease.topic)
        if current is None or current.token != lease.token:
            return
        self._states[lease.topic] = state
        for waiter in self._state_waiters.pop(lease.topic, []):
            if not waiter.done():
                waiter.set_result(state)

    async def topic_state(self, topic: str, wait: float) -> TopicState | None:
        state = self._states.get(topic)
        if state is not None or wait <= 0:
            return state
        waiter: asyncio.Future[TopicState] = asyncio.get_running_loop().create_future()
        self._state_waiters.setdefault(topic, []).append(waiter)
        try:
            return await asyncio.wait_for(waiter, wait)
        except TimeoutError:
            return None
        finally:
            waiters = self._state_waiters.get(topic)
            if waiters is not None and waiter in waiters:
                waiters.remove(waiter)
                if not waiters:
                    del self._state_waiters[topic]

    async def readers(self, topics: Iterable[str]) -> dict[str, int]:
        return {t: int(t in self._subscribed) for t in topics}

    # -- sessions ----------------------------------------------------------------------------

    async def save_session(self, pid: str, record: bytes, *, live: bool) -> None:
        self._status.sessions_saved += 1
        self._sessions[pid] = (record, None if live else self.clock() + self.window)

    async def take_session(self, pid: str) -> bytes | None:
        saved = self._sessions.pop(pid, None)
        if saved is None:
            return None
        record, until = saved
        if until is not None and until < self.clock():
            return None
        self._status.sessions_taken += 1
        return record

    async def drop_session(self, pid: str) -> None:
        self._sessions.pop(pid, None)

    # -- health ------------------------------------------------------------------------------

    def status(self) -> BrokerStatus:
        status = self._status
        status.owned_topics = len(self._leases)
        status.subscribed_topics = len(self._subscribed)
        status.history_bytes = self.bytes
        status.details = {"sessions": len(self._sessions)}
        return status
