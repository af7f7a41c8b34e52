"""The Redis broker: any number of kichat processes sharing one Redis primary.

Connections: redis-py's asyncio client (a small pool) for commands and Lua scripts, and one
subscriber connection of our own (:mod:`.subscriber`) that receives, in one ordered stream,
this node's inbox, the control channel and the publications of every subscribed topic.

Ordering and completeness. Publications get their position from one ``INCR`` inside the
publish script, which also ``PUBLISH``es them, so every subscriber connection receives them in
position order. Redis never skips a message on a live connection; it drops the connection
instead (a restart, an output buffer overflow, ``CLIENT KILL``). So after every reconnect the
node re-subscribes, reads each topic's history after the last position it delivered (one
script, an atomic snapshot), delivers that in order, then the live messages that came after the
snapshot. If the history no longer reaches back far enough, the topic has a gap: it is reported
(:meth:`Handler.on_gap`), never skipped silently.

Publishing is batched: :meth:`RedisBroker.publish` queues, and one script call per loop turn
sends everything queued (in order, one batch in flight). A batch carries an id, so a retry
after a lost reply cannot apply it twice. While Redis is unreachable the queue holds up to
``outbox_limit`` publications; they go out when Redis is back, if the node still owns (or
owns again, after a reset) their topic.

Leases: ``SET own:T node:token PX ttl``, renewed for all topics in one script every
``renew_interval``; the publish script compares the owner on every publication (the fence).
A node that could not renew for ``0.8 × lease_ttl`` gives its leases up by itself, before Redis
lets them expire, so an owner cut off from Redis stops feeding Kick events it cannot publish.
When Redis loses its data (a new epoch), each node takes its own leases again as it reconnects,
under new tokens, and its feeds run on (:meth:`Handler.on_lease_renewed`).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import random
import secrets
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import redis.asyncio as aioredis
from redis.asyncio.connection import SSLConnection, parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from kichat.broker.base import (
    Broker,
    BrokerStatus,
    Handler,
    History,
    Lease,
    Publication,
    TopicState,
)
from kichat.broker.redis import scripts
from kichat.broker.redis.sessions import SessionKeys
from kichat.broker.redis.subscriber import SubscriberProtocol, open_subscriber
from kichat.errors import BrokerUnavailable

log = logging.getLogger("kichat.cluster")

_MAX_BATCH: Final = 512  # publications per script call
_FENCE_FRACTION: Final = 0.8  # of the lease TTL without renewal, after which we let go ourselves
_HANDOVER_SETTLE: Final = 0.1  # seconds a leaving owner keeps reading after its successor is ready


@dataclass(slots=True)
class _Topic:
    last: int = 0  # position of the last publication delivered (or the subscription point)
    ready: bool = False  # the subscription point is known; until then messages are held
    held: list[tuple[int, bytes]] = field(default_factory=list)


class RedisBroker(Broker):
    def __init__(
        self,
        url: str,
        *,
        node_id: str,
        prefix: str = "kichat:",
        window: float = 120.0,
        lease_ttl: float = 10.0,
        renew_interval: float | None = None,
        node_timeout: float = 1.5,
        history_max: int = 10_000,
        fingerprint: str = "",
        command_timeout: float = 2.0,
        probe_interval: float = 5.0,
        outbox_limit: int = 10_000,
        reconnect_max: float = 2.0,
    ) -> None:
        self.node_id = node_id
        # Who holds leases, beats and reads an inbox: this process, not its node id. A worker
        # that its supervisor restarts comes back under the same node id within a second; had
        # it inherited the dead process's liveness, that process's leases would have looked
        # alive (nobody renewing them) until they expired, and their gap counted as no takeover.
        self.member = f"{node_id}/{secrets.token_hex(4)}"
        self.prefix = prefix
        self.window = window
        self.lease_ttl = lease_ttl
        self.renew_interval = renew_interval or lease_ttl / 4
        # A node that has not beaten for this long counts as dead: its feeds may be taken.
        self.node_timeout = node_timeout
        self.history_max = history_max
        self.fingerprint = fingerprint
        self.command_timeout = command_timeout
        self.probe_interval = probe_interval
        self.outbox_limit = outbox_limit
        self.reconnect_max = reconnect_max
        # Every node retries on the same capped backoff: the previous owners of a topic reach
        # a restarted Redis at most this long after any other node does.
        self.reclaim_grace = reconnect_max + command_timeout
        params = parse_url(url)
        self._params = {**params, "ssl": params.get("connection_class") is SSLConnection}
        self._redis = aioredis.Redis.from_url(
            url,
            socket_timeout=command_timeout,
            socket_connect_timeout=command_timeout,
            retry=Retry(NoBackoff(), 0),
            decode_responses=False,
        )
        self._scripts = {
            name: self._redis.register_script(getattr(scripts, name))
            for name in ("HELLO", "PUBLISH", "READ", "ACQUIRE", "RENEW", "RELEASE", "ANNOUNCE",
                         "TAKE_SESSION", "HAND_OVER", "TRANSFER", "KNOWN")
        }  # fmt: skip
        self._inbox = f"{prefix}node:{self.member}".encode()
        self._ctl = f"{prefix}ctl".encode()
        self._ev = f"{prefix}ev:".encode()
        self._epoch = ""
        self._position = 0
        self._handler: Handler | None = None
        self._topics: dict[str, _Topic] = {}
        self._leases: dict[str, Lease] = {}
        self._state_waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._outbox: deque[tuple[str, bytes, str, bytes]] = deque()
        self._flushing = False
        self._flushed = asyncio.Event()  # set whenever the outbox is empty and nothing in flight
        self._flushed.set()
        self._transfers: dict[str, asyncio.Future[int]] = {}  # topics we wait to receive
        self._transferring: set[str] = set()  # topics we are handing to a successor
        self._batch_ids = itertools.count(1)
        self._batch_prefix = secrets.token_hex(4)
        self._proto: SubscriberProtocol | None = None
        self._ready = asyncio.Event()
        self._resyncing = False
        self._held: list[tuple[bytes, bytes]] = []
        self._probe_seen = 0
        self._last_renewed = time.monotonic()
        self._tasks: list[asyncio.Task[None]] = []
        self._hello_lock = asyncio.Lock()
        self._closing = False
        self._status = BrokerStatus(backend="redis", node_id=node_id, epoch="", connected=False)
        self._sessions = SessionKeys(self._redis, self._scripts["TAKE_SESSION"], self._status,
                                     prefix=prefix, member=self.member, window=window,
                                     live_slack=self.renew_interval * 2)  # fmt: skip
        self._misconfigured: str | None = None
        self._other_prefixes: list[str] = []
        self._unreachable: str | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def epoch(self) -> str:
        return self._epoch

    @property
    def position(self) -> int:
        return self._position

    async def start(self, handler: Handler) -> None:
        """Connect in the background, keep the connection up, and wait a moment for the first
        connection so that a healthy start is ready at once. Redis being unreachable does not
        stop the node: it is not ready (``status().problem``) and keeps trying."""
        self._handler = handler
        self._tasks = [
            asyncio.create_task(self._supervise(), name="kichat-broker-subscriber"),
            asyncio.create_task(self._maintain(), name="kichat-broker-leases"),
            asyncio.create_task(self._beat(), name="kichat-broker-heartbeat"),
        ]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), self.command_timeout * 2)
        if not self._ready.is_set():
            self._warn(f"Redis is not reachable yet ({self._unreachable}); retrying")

    async def close(self) -> None:
        self._closing = True
        with contextlib.suppress(BrokerUnavailable, RedisError, TimeoutError):
            async with asyncio.timeout(self.command_timeout):
                await self._drain_outbox()
        for lease in list(self._leases.values()):
            with contextlib.suppress(BrokerUnavailable, RedisError, TimeoutError):
                await self.release(lease)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._proto is not None:
            self._proto.close()
        with contextlib.suppress(RedisError, TimeoutError):
            await self._redis.delete(f"{self.prefix}alive:{self.member}")
        await self._redis.aclose()

    async def _call(self, name: str, *args: Any) -> Any:
        try:
            return await self._scripts[name](keys=[], args=[self.prefix, *args])
        except RedisError as exc:
            raise BrokerUnavailable(f"Redis: {exc}") from exc

    async def _hello(self) -> None:
        # One at a time: every task that meets a new epoch calls this, and the first one must
        # finish moving this node into it before the others look.
        async with self._hello_lock:
            await self._hello_locked()

    async def _hello_locked(self) -> None:
        proposal = secrets.token_hex(4)
        reply = await self._call("HELLO", proposal, self.fingerprint)
        epoch, fingerprint = reply[0].decode(), reply[1]
        others = sorted(raw.decode() for raw in reply[3:])
        if others != self._other_prefixes:
            self._other_prefixes = others
            if others:
                log.warning(
                    "other kichat clusters with this cluster's settings use key prefixes %s on "
                    "this Redis: clusters do not share feeds, so each subscribes to Kick (set the "
                    "same cluster.key_prefix on every node of one cluster)", ", ".join(others),
                )  # fmt: skip
        if fingerprint.decode() != self.fingerprint:
            if self._misconfigured is None:
                self._misconfigured = (
                    "this node's settings differ from its cluster's (Pusher key, channel "
                    "templates or recovery window): every node sharing a Redis key prefix must "
                    "use the same"
                )
                log.error("cluster misconfiguration: %s", self._misconfigured)
        else:
            self._misconfigured = None
        if self._epoch and epoch != self._epoch:
            self._reset(epoch, await self._reclaim(epoch))
        self._epoch = self._status.epoch = epoch

    async def _reclaim(self, epoch: str) -> dict[str, Lease]:
        """The leases this node held, taken again in the new ``epoch`` before any other node
        can: the lease keys are gone with the old state, and a node that took a topic now would
        start a fresh feed and miss what Kick sends until it is subscribed. The heartbeat
        comes first, or another node would find the holder dead and take the lease over."""
        if not self._leases:
            return {}
        try:
            await self._beat_once()
            taken = await self._acquire_in(epoch, self._leases)
        except BrokerUnavailable as exc:
            log.warning("cannot take this node's feeds again in the new epoch: %s", exc)
            return {}
        # None: reset once more meanwhile, which the next hello sees.
        return {lease.topic: lease for lease in taken or ()}

    def _reset(self, epoch: str, regained: dict[str, Lease]) -> None:
        """The shared state was lost: start over in ``epoch``, feeding what was ``regained``."""
        kept = f"; {len(regained)} of {len(self._leases)} feeds kept" if self._leases else ""
        log.warning("Redis lost the cluster's state (new epoch %s): sessions saved there are "
                    "gone, positions restart%s", epoch, kept)  # fmt: skip
        self._status.resets += 1
        self._position = 0
        for topic in self._topics.values():
            topic.last = 0
        lost = [name for name in self._leases if name not in regained]
        self._leases.clear()
        self._leases.update(regained)
        handler = self._handler
        if handler is not None:
            handler.on_reset(epoch)
            for lease in regained.values():
                handler.on_lease_renewed(lease)
            for topic_name in lost:
                self._status.leases_lost += 1
                handler.on_lease_lost(topic_name)

    # -- the subscriber connection ---------------------------------------------------------------

    async def _connect_subscriber(self) -> SubscriberProtocol:
        proto = await open_subscriber(self._params, self._on_message, self.command_timeout)
        self._proto = proto
        self._resyncing = True
        self._held = []
        try:
            channels = [self._inbox, self._ctl, *(self._ev + t.encode() for t in self._topics)]
            async with asyncio.timeout(self.command_timeout * 2):
                await asyncio.gather(*proto.subscribe(*channels))
            await self._catch_up()
        except BaseException:
            proto.close()
            raise
        self._status.connected = True
        self._ready.set()
        return proto

    async def _catch_up(self) -> None:
        """After (re)subscribing: deliver what each topic published since its last delivered
        position, then what arrived live meanwhile, in position order; report gaps."""
        topics = {name: t for name, t in self._topics.items() if t.ready}
        gaps: set[str] = set()
        if topics:
            args: list[Any] = [self._epoch]
            for name, topic in topics.items():
                args += [name, topic.last]
            reply = await self._call("READ", *args)
            if reply[0] == b"epoch":
                await self._hello()
                args[0] = self._epoch
                reply = await self._call("READ", *args)
            upto = int(reply[1])
            streams = []
            for i in range(2, len(reply), 3):
                name = reply[i].decode()
                if not int(reply[i + 1]):
                    gaps.add(name)
                flat = reply[i + 2]
                streams.append([(int(flat[j]), name, flat[j + 1]) for j in range(0, len(flat), 2)])
            for position, name, payload in heapq.merge(*streams):
                self._deliver(name, position, payload)
            for topic in topics.values():
                topic.last = max(topic.last, upto)
            self._position = max(self._position, upto)
            self._status.resyncs += 1
        self._resyncing = False
        held, self._held = self._held, []
        for channel, data in held:
            self._on_message(channel, data)
        if gaps:
            self._status.gaps += len(gaps)
            log.warning("history of %d topics no longer reaches back to what this node last "
                        "delivered: their clients must resynchronise", len(gaps))  # fmt: skip
            if self._handler is not None:
                self._handler.on_gap(frozenset(gaps))

    async def _supervise(self) -> None:
        """Connect the subscriber (and say hello) until it works; when it is lost, again."""
        attempt = 0
        while not self._closing:
            try:
                await self._hello()
                proto = await self._connect_subscriber()
            except (BrokerUnavailable, TimeoutError) as exc:
                self._warn(f"cannot reach Redis: {exc}")
                await asyncio.sleep(self._delay(attempt))
                attempt += 1
                continue
            attempt = 0
            self._recovered()
            await asyncio.shield(proto.lost)
            self._ready.clear()
            self._status.connected = False
            if not self._closing:
                self._warn("the Redis subscriber connection was lost; reconnecting")

    def _on_message(self, channel: bytes, data: bytes) -> None:
        if self._resyncing:
            self._held.append((channel, data))
            return
        if channel.startswith(self._ev):
            sep = data.find(b"|")
            if sep < 0:
                return
            name = channel[len(self._ev) :].decode()
            topic = self._topics.get(name)
            if topic is None:
                return
            position = int(data[:sep])
            if not topic.ready:
                topic.held.append((position, data[sep + 1 :]))
            elif position > topic.last:
                self._deliver(name, position, data[sep + 1 :])
        elif channel == self._inbox:
            kind, _, arg = data.partition(b"|")
            if kind == b"ready":
                offered, _, successor = arg.decode().partition("|")
                if offered in self._leases and offered not in self._transferring:
                    self._transferring.add(offered)
                    asyncio.get_running_loop().create_task(self._transfer(offered, successor))
            elif kind == b"lease":
                offered, _, token = arg.decode().partition("|")
                transfer = self._transfers.get(offered)
                if transfer is not None and not transfer.done() and token.isdigit():
                    transfer.set_result(int(token))
            elif kind == b"taken" and self._handler is not None:
                pid = arg.decode()
                self._sessions.forget(pid)
                self._handler.on_session_taken(pid)
            elif kind == b"probe":
                self._probe_seen = int(arg)
        elif channel == self._ctl:
            kind, _, arg = data.partition(b"|")
            name = arg.decode()
            if kind == b"state":
                for waiter in self._state_waiters.pop(name, []):
                    if not waiter.done():
                        waiter.set_result(None)
            elif kind == b"free" and self._handler is not None:
                self._handler.on_topic_released(name)
            elif kind == b"handoff" and self._handler is not None and name not in self._leases:
                self._handler.on_hand_over(name)

    def _deliver(self, name: str, position: int, payload: bytes) -> None:
        topic = self._topics.get(name)
        if topic is None or position <= topic.last:
            return
        topic.last = position
        self._position = max(self._position, position)
        self._status.delivered += 1
        if self._handler is not None:
            self._handler.on_publication(name, position, payload)

    async def _wait_ready(self) -> SubscriberProtocol:
        if not self._ready.is_set():
            try:
                async with asyncio.timeout(self.command_timeout):
                    await self._ready.wait()
            except TimeoutError:
                raise BrokerUnavailable("Redis is unreachable") from None
        assert self._proto is not None
        return self._proto

    # -- topics ----------------------------------------------------------------------------------

    async def subscribe(self, topic: str) -> int:
        existing = self._topics.get(topic)
        if existing is not None and existing.ready:
            return existing.last
        proto = await self._wait_ready()
        state = self._topics.setdefault(topic, _Topic())
        try:
            async with asyncio.timeout(self.command_timeout):
                await asyncio.gather(*proto.subscribe(self._ev + topic.encode()))
            raw = await self._redis.get(f"{self.prefix}g")
        except (RedisError, TimeoutError, BrokerUnavailable) as exc:
            if self._topics.get(topic) is state and not state.ready:
                del self._topics[topic]
            raise BrokerUnavailable(f"cannot subscribe {topic}: {exc}") from exc
        if self._topics.get(topic) is not state:
            raise BrokerUnavailable(f"subscription to {topic} was cancelled")
        if not state.ready:
            state.last = max(state.last, int(raw or 0))
            state.ready = True
            held, state.held = state.held, []
            for position, payload in held:
                self._deliver(topic, position, payload)
        return state.last

    async def unsubscribe(self, topic: str) -> None:
        if self._topics.pop(topic, None) is None:
            return
        proto = self._proto
        if proto is not None and self._ready.is_set():
            with contextlib.suppress(BrokerUnavailable):
                proto.unsubscribe(self._ev + topic.encode())

    async def history(self, since: Mapping[str, int]) -> History | None:
        if not since:
            return History([], self._position)
        args: list[Any] = [self._epoch]
        for topic, after in since.items():
            args += [topic, after]
        reply = await self._call("READ", *args)
        if reply[0] == b"epoch":
            return None
        upto = int(reply[1])
        streams = []
        for i in range(2, len(reply), 3):
            if not int(reply[i + 1]):
                return None
            name = reply[i].decode()
            flat = reply[i + 2]
            streams.append(
                [Publication(name, int(flat[j]), flat[j + 1]) for j in range(0, len(flat), 2)]
            )
        for after in since.values():
            if after > upto:
                return None  # a position this epoch never reached: not ours
        merged = list(heapq.merge(*streams, key=lambda p: p.position))
        return History(merged, upto)

    # -- publishing ------------------------------------------------------------------------------

    def publish(
        self, lease: Lease, payload: bytes, *, key: str | None = None, dedupe: bool = False
    ) -> None:
        if self._leases.get(lease.topic) is not lease:
            self._status.publish_rejected += 1
            return
        outbox = self._outbox
        outbox.append((lease.topic, payload, key or "", b"1" if dedupe else b""))
        if len(outbox) > self.outbox_limit:
            outbox.popleft()
            self._status.publish_rejected += 1
            self._warn(f"publish queue full ({self.outbox_limit}): dropping the oldest")
        if not self._flushing:
            self._flushing = True
            self._flushed.clear()
            asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        try:
            await self._drain_outbox()
        finally:
            self._flushing = False
            self._flushed.set()

    async def _drain_outbox(self) -> None:
        attempt = 0
        while self._outbox and not (self._closing and not self._status.connected):
            batch = [self._outbox.popleft() for _ in range(min(_MAX_BATCH, len(self._outbox)))]
            batch_id = f"{self._batch_prefix}:{next(self._batch_ids)}"
            while True:
                args: list[Any] = [self._epoch, batch_id, self.member, self.window,
                                   self.history_max]  # fmt: skip
                kept = []
                for entry in batch:
                    lease = self._leases.get(entry[0])
                    if lease is None:
                        self._status.publish_rejected += 1
                        continue
                    kept.append(entry)
                    args += [entry[0], lease.token, entry[1], entry[2], entry[3]]
                batch = kept
                if not batch:
                    break
                try:
                    reply = await self._call("PUBLISH", *args)
                except BrokerUnavailable as exc:
                    if self._closing:
                        return
                    self._warn(f"cannot publish to Redis: {exc}")
                    await asyncio.sleep(self._delay(attempt))
                    attempt += 1
                    continue
                attempt = 0
                if reply[0] == b"epoch":
                    await self._hello()
                    batch_id = f"{self._batch_prefix}:{next(self._batch_ids)}"
                    continue
                self._published(reply)
                break

    def _published(self, reply: list[Any]) -> None:
        status = self._status
        status.published += int(reply[1])
        status.publish_rejected += int(reply[2])
        for raw in reply[3:]:
            topic = raw.decode()
            status.publish_rejected += 1
            if self._leases.pop(topic, None) is not None:
                status.leases_lost += 1
                log.warning("lease of %s was taken over by another node: stopping", topic)
                self._drop_queued(topic)
                if self._handler is not None:
                    self._handler.on_lease_lost(topic)

    def _drop_queued(self, topic: str) -> None:
        kept = [entry for entry in self._outbox if entry[0] != topic]
        self._status.publish_rejected += len(self._outbox) - len(kept)
        self._outbox = deque(kept)

    # -- ownership -------------------------------------------------------------------------------

    @property
    def leases(self) -> Mapping[str, Lease]:
        return self._leases

    async def acquire(self, topics: Iterable[str]) -> list[Lease]:
        wanted = [t for t in dict.fromkeys(topics) if t not in self._leases]
        if not wanted:
            return []
        taken = await self._acquire_in(self._epoch, wanted)
        if taken is None:
            await self._hello()
            return []
        for lease in taken:
            self._leases[lease.topic] = lease
            if lease.takeover:
                self._status.takeovers += 1
        return taken

    async def _acquire_in(self, epoch: str, topics: Iterable[str]) -> list[Lease] | None:
        """The leases of ``topics`` that the ACQUIRE script gave us; None if ``epoch`` is over."""
        reply = await self._call(
            "ACQUIRE", epoch, self.member, round(self.lease_ttl * 1000), *topics
        )
        if reply and reply[0] == b"epoch":
            return None
        taken = [Lease(reply[i].decode(), int(reply[i + 1]), takeover=bool(int(reply[i + 2])))
                 for i in range(0, len(reply), 3)]  # fmt: skip
        if taken:  # as fresh as a renewal
            self._last_renewed = max(self._last_renewed, time.monotonic() - self.renew_interval)
        return taken

    async def release(self, lease: Lease) -> None:
        if self._leases.get(lease.topic) is lease:
            del self._leases[lease.topic]
        self._drop_queued(lease.topic)
        await self._call("RELEASE", self.member, lease.topic, lease.token)

    async def hand_over(self, lease: Lease) -> bool:
        offered = await self._call(
            "HAND_OVER", self.member, lease.topic, lease.token, round(self.lease_ttl * 1000)
        )
        return bool(offered)

    async def take_over(self, topic: str) -> Lease | None:
        """Tell the leaving owner we are ready (subscribed upstream); it publishes what it still
        holds, then moves the lease to us. ``None`` if it picked another successor or is gone."""
        try:
            raw = await self._redis.get(f"{self.prefix}handoff:{topic}")
        except RedisError as exc:
            raise BrokerUnavailable(f"Redis: {exc}") from exc
        if raw is None:
            return None
        holder = (raw.decode() if isinstance(raw, bytes) else raw).rsplit(":", 1)[0]
        waiter: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._transfers[topic] = waiter
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.command_timeout * 2
        token: int | None = None
        try:
            await self._redis.publish(f"{self.prefix}node:{holder}", f"ready|{topic}|{self.member}")
            while token is None:
                step = min(self.renew_interval, deadline - loop.time())
                try:
                    token = await asyncio.wait_for(asyncio.shield(waiter), max(0.0, step))
                except TimeoutError:
                    # Pub/sub delivers at most once: the lease may be ours without our hearing
                    # it. Look before it expires (nobody renews a lease its holder ignores).
                    token = await self._lease_held_here(topic)
                    if token is None and loop.time() >= deadline:
                        return None
        except RedisError:
            return None
        finally:
            self._transfers.pop(topic, None)
        lease = self._leases[topic] = Lease(topic, token, takeover=True)
        self._status.takeovers += 1
        return lease

    async def _lease_held_here(self, topic: str) -> int | None:
        """The token of ``topic``'s lease if Redis says this process holds it."""
        try:
            raw = await self._redis.get(f"{self.prefix}own:{topic}")
        except RedisError:
            return None
        if raw is None:
            return None
        holder, _, token = (raw.decode() if isinstance(raw, bytes) else raw).rpartition(":")
        return int(token) if holder == self.member and token.isdigit() else None

    async def _transfer(self, topic: str, successor: str) -> None:
        """The successor is subscribed upstream: publish what we still hold, then give it the
        lease (make-before-break: an event either reached us before it was ready, and is
        published now, or reached it too, and its copy is dropped by key)."""
        try:
            lease = self._leases.get(topic)
            if lease is None:
                return
            # Upstream events sent to us just before the successor was subscribed may still be
            # on their way in: read them, then publish everything before letting go.
            await asyncio.sleep(_HANDOVER_SETTLE)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._flushed.wait(), self.command_timeout)
            token = await self._call(
                "TRANSFER", self._epoch, self.member, topic, lease.token, successor,
                round(self.lease_ttl * 1000),
            )  # fmt: skip
            if token is None:
                return
            # The lease is the successor's now, and it must hear so even if a publication of
            # ours, fenced by the move, has already made us drop the lease (seen: the
            # successor waited in vain, gave up, and the handover's gap was lost).
            if self._leases.get(topic) is lease:
                del self._leases[topic]
                self._drop_queued(topic)
                if self._handler is not None:
                    self._handler.on_lease_lost(topic)
            await self._redis.publish(
                f"{self.prefix}node:{successor}", f"lease|{topic}|{int(token)}"
            )
        except (BrokerUnavailable, RedisError) as exc:
            log.warning("handing %s over failed: %s", topic, exc)
        finally:
            self._transferring.discard(topic)

    async def announce(self, lease: Lease, state: TopicState) -> None:
        value = "1" if state.live else f"0|{state.code}|{state.message}"
        await self._call(
            "ANNOUNCE", self.member, lease.topic, lease.token, value,
            round(self.lease_ttl * 1000),
        )  # fmt: skip

    async def topic_state(self, topic: str, wait: float) -> TopicState | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            waiter: asyncio.Future[None] = loop.create_future()
            self._state_waiters.setdefault(topic, []).append(waiter)
            try:
                raw = await self._redis.get(f"{self.prefix}live:{topic}")
            except RedisError as exc:
                raise BrokerUnavailable(f"Redis: {exc}") from exc
            if raw is not None:
                return _parse_state(raw if isinstance(raw, bytes) else raw.encode())
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter, remaining)

    async def readers(self, topics: Iterable[str]) -> dict[str, int]:
        names = list(topics)
        if not names:
            return {}
        try:
            counts = await self._redis.pubsub_numsub(*(f"{self.prefix}ev:{t}" for t in names))
        except RedisError as exc:
            raise BrokerUnavailable(f"Redis: {exc}") from exc
        return {name: int(n) for name, (_, n) in zip(names, counts, strict=True)}

    async def _beat_once(self) -> None:
        try:
            await self._redis.set(
                f"{self.prefix}alive:{self.member}", b"1", px=round(self.node_timeout * 1000)
            )
        except RedisError as exc:
            raise BrokerUnavailable(f"Redis: {exc}") from exc

    async def _beat(self) -> None:
        """The heartbeat other nodes read to tell that this one is alive."""
        while True:
            with contextlib.suppress(BrokerUnavailable, TimeoutError):
                await self._beat_once()
            await asyncio.sleep(self.node_timeout / 3)

    async def known(self, topic: str, keys: Iterable[str]) -> set[str]:
        reply = await self._call("KNOWN", self._epoch, topic, *keys)
        return {k.decode() for k in reply}

    async def _maintain(self) -> None:
        """Renew leases, refresh live sessions, probe the subscriber; every renew interval."""
        probe = itertools.count(1)
        last_probe = time.monotonic()
        while True:
            await asyncio.sleep(self.renew_interval)
            now = time.monotonic()
            try:
                started = time.perf_counter()
                await self._redis.ping()
                self._status.rtt_ms = round((time.perf_counter() - started) * 1000, 3)
                await self._renew()
                if now - last_probe >= self.probe_interval and self._ready.is_set():
                    await self._hello()  # notices state lost under live connections too
                    await self._probe(next(probe))
                    last_probe = now
                self._recovered()
            except (BrokerUnavailable, RedisError, TimeoutError) as exc:
                self._warn(f"Redis unreachable: {exc}")
            if self._leases and time.monotonic() - self._last_renewed > (
                self.lease_ttl * _FENCE_FRACTION
            ):
                self._fence_self()

    async def _renew(self) -> None:
        leases = list(self._leases.values())
        if leases:
            args: list[Any] = [self._epoch, self.member, round(self.lease_ttl * 1000)]
            for lease in leases:
                args += [lease.topic, lease.token]
            reply = await self._call("RENEW", *args)
            if reply[0] == b"epoch":
                await self._hello()
                return
            for i, lease in enumerate(leases):
                if not int(reply[1 + 2 * i]) and self._leases.get(lease.topic) is lease:
                    del self._leases[lease.topic]
                    self._status.leases_lost += 1
                    self._drop_queued(lease.topic)
                    log.warning("lease of %s expired or was taken over", lease.topic)
                    if self._handler is not None:
                        self._handler.on_lease_lost(lease.topic)
        self._last_renewed = time.monotonic()
        await self._sessions.refresh()

    def _fence_self(self) -> None:
        log.warning(
            "could not renew leases for %.1f s: giving up %d topics (another node takes them over)",
            time.monotonic() - self._last_renewed, len(self._leases),
        )  # fmt: skip
        lost = list(self._leases)
        self._leases.clear()
        for topic in lost:
            self._status.leases_lost += 1
            self._drop_queued(topic)
            if self._handler is not None:
                self._handler.on_lease_lost(topic)

    async def _probe(self, n: int) -> None:
        """Check that the subscriber still receives (centrifugo#1189: a subscriber on a
        detached replica looked healthy and got nothing)."""
        await self._redis.publish(self._inbox, b"probe|%d" % n)
        deadline = time.monotonic() + self.command_timeout
        while self._probe_seen < n:
            if time.monotonic() > deadline:
                log.warning("the Redis subscriber stopped receiving: reconnecting it")
                if self._proto is not None:
                    self._proto.close()
                return
            await asyncio.sleep(0.01)

    # -- sessions (see .sessions) -----------------------------------------------------------------

    async def save_session(self, pid: str, record: bytes, *, live: bool) -> None:
        await self._sessions.save(pid, record, live=live)

    async def take_session(self, pid: str) -> bytes | None:
        return await self._sessions.take(pid)

    async def drop_session(self, pid: str) -> None:
        await self._sessions.drop(pid)

    # -- health ----------------------------------------------------------------------------------

    def _delay(self, attempt: int) -> float:
        base: float = min(self.reconnect_max, 0.05 * 2.0**attempt)
        return base * random.uniform(0.75, 1.0)

    def _warn(self, message: str) -> None:
        """One WARNING per distinct problem (not one per retry), INFO when it is over."""
        if self._unreachable != message:
            log.warning("%s", message)
        self._unreachable = message

    def _recovered(self) -> None:
        if self._unreachable is not None:
            log.info("Redis reachable again")
            self._unreachable = None

    def status(self) -> BrokerStatus:
        status = self._status
        status.problem = self._misconfigured or self._unreachable
        status.owned_topics = len(self._leases)
        status.subscribed_topics = len(self._topics)
        status.details = {
            "other_prefixes": self._other_prefixes,
            "outbox": len(self._outbox),
            "live_sessions": len(self._sessions.live),
            "prefix": self.prefix,
        }
        return status


def _parse_state(raw: bytes) -> TopicState:
    if raw == b"1":
        return TopicState(live=True)
    parts = raw.decode(errors="replace").split("|", 2)
    code, message = [*parts, "", ""][1:3]
    return TopicState(live=False, code=code, message=message)
