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
import heapq
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from kichat.broker.base import (
    Broker,
    BrokerStatus,
    Handler,
    History,
    Lease,
    Publication,
    TopicState,
)

# How many recent entries a publication with a dedupe key is compared with (a takeover overlap
# lasts a fraction of a second; chat rarely sends more than a few hundred messages in that).
DEDUPE_SCAN = 500


@dataclass(slots=True)
class _Entry:
    position: int
    payload: bytes  # emptied when its topic's log is dropped, so the memory goes at once
    at: float
    key: str | None
    log: _TopicLog


class _TopicLog:
    __slots__ = ("alive", "entries", "evicted_through", "topic")

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.entries: deque[_Entry] = deque()
        self.evicted_through = 0
        self.alive = True


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
        self._all: deque[_Entry] = deque()
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
        elif dedupe and key is not None and _seen(log, key):
            status.publish_rejected += 1
            return
        self._position += 1
        position = self._position
        now = self.clock()
        entry = _Entry(position, payload, now, key, log)
        self._all.append(entry)
        log.entries.append(entry)
        self.bytes += len(payload)
        if self.bytes > self.max_bytes or self._all[0].at < now - self.window:
            self._trim(now)
        status.published += 1
        if topic in self._subscribed and self._handler is not None:
            status.delivered += 1
            self._handler.on_publication(topic, position, payload)

    def _trim(self, now: float) -> None:
        horizon = now - self.window
        entries = self._all
        while entries and (entries[0].at < horizon or self.bytes > self.max_bytes):
            entry = entries.popleft()
            log = entry.log
            if not log.alive:
                continue  # accounted for when its topic was dropped
            self.bytes -= len(entry.payload)
            log.entries.popleft()
            log.evicted_through = entry.position

    def drop_history(self, topic: str) -> None:
        """Forget a topic's history (no session can need it any more)."""
        log = self._logs.pop(topic, None)
        if log is None:
            return
        log.alive = False
        for entry in log.entries:
            self.bytes -= len(entry.payload)
            entry.payload = b""
        log.entries.clear()

    async def history(self, since: Mapping[str, int]) -> History | None:
        return self.read_history(since)

    def read_history(self, since: Mapping[str, int]) -> History | None:
        """:meth:`history`, synchronously (the memory broker never waits)."""
        streams: list[list[_Entry]] = []
        for topic, after in since.items():
            if after > self._position:
                return None
            log = self._logs.get(topic)
            if log is None:
                continue
            if log.evicted_through > after:
                return None
            tail = _tail_after(log.entries, after)
            if tail:
                streams.append(tail)
        merged: Iterable[_Entry] = (
            heapq.merge(*streams, key=lambda e: e.position) if len(streams) > 1
            else streams[0] if streams else []
        )  # fmt: skip
        pubs = [Publication(e.log.topic, e.position, e.payload) for e in merged]
        return History(pubs, self._position)

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
        recent = {e.key for e in list(log.entries)[-DEDUPE_SCAN:]}
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
        status.details = {"history_bytes": self.bytes, "sessions": len(self._sessions)}
        return status


def _seen(log: _TopicLog, key: str) -> bool:
    for n, entry in enumerate(reversed(log.entries)):
        if n >= DEDUPE_SCAN:
            return False
        if entry.key == key:
            return True
    return False


def _tail_after(entries: deque[_Entry], position: int) -> list[_Entry]:
    """Entries after ``position``; they are at the end, so walk from the right."""
    tail: list[_Entry] = []
    for entry in reversed(entries):
        if entry.position <= position:
            break
        tail.append(entry)
    tail.reverse()
    return tail
