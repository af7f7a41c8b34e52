"""The broker seam: what one kichat process needs from "the rest of the cluster".

Centrifuge's ``Broker`` is the model: one small interface, implementations side by side,
chosen by configuration. :class:`~kichat.broker.memory.MemoryBroker` is the single-process
default; :class:`~kichat.broker.redis.RedisBroker` shares one Redis between any number of
processes. Nothing above this module knows which one it has.

The vocabulary:

* A **topic** is one upstream feed (the relay uses ``chatroom:668`` and ``channel:676``). Its
  **publications** are opaque bytes, each given a **position**: one counter for the whole
  cluster (not per topic), so that a reader of several topics that receives them in position
  order can describe how far it has read in *every* topic with one number. That is what lets a
  Socket.IO client's single recovery offset stand for all of its rooms.
* Every position lives in an **epoch**. When the shared state is lost (Redis restarted without
  its data) the epoch changes, positions start again and old offsets mean nothing.
* A node **subscribes** to the topics its clients want. The broker calls
  :meth:`Handler.on_publication` for each publication of a subscribed topic, in position order
  across all topics, each exactly once, with no gap; a gap it cannot fill is reported
  (:meth:`Handler.on_gap`), never skipped silently.
* The **history** of a topic can be read from a position on, for clients that reconnect.
* One node at a time **owns** a topic (holds its :class:`Lease`) and is the only one that may
  publish to it; a lease carries a fencing token, so a stale owner's publications are refused.
* **Sessions** (a Socket.IO client's state, opaque bytes) are saved so that any node can take
  them over when the client reconnects there, even after the node that held them died.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

__all__ = [
    "Broker",
    "BrokerStatus",
    "Handler",
    "History",
    "Lease",
    "Publication",
    "TopicState",
]


@dataclass(frozen=True, slots=True)
class Publication:
    topic: str
    position: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class History:
    """Publications of some topics after given positions, merged in position order, complete up
    to and including ``upto`` (a position to continue from with live publications)."""

    publications: list[Publication]
    upto: int


@dataclass(frozen=True, slots=True)
class Lease:
    """The right to publish to ``topic``. ``token`` increases with every new owner (fencing)."""

    topic: str
    token: int
    takeover: bool = False  # the previous owner died or was fenced off (not a clean release)


@dataclass(frozen=True, slots=True)
class TopicState:
    """What the owner of a topic announced: ``live`` (its upstream works) or why not."""

    live: bool
    message: str = ""
    code: str = ""


@dataclass(slots=True)
class BrokerStatus:
    """For ``/stats``, ``/metrics`` and ``/readyz``. Counters only grow."""

    backend: str
    node_id: str
    epoch: str
    connected: bool = True
    problem: str | None = None  # why the node is not ready, as an operator should read it
    owned_topics: int = 0
    subscribed_topics: int = 0
    published: int = 0  # publications this node made (accepted)
    publish_rejected: int = 0  # refused: the lease was lost (fenced) or the entry was a duplicate
    delivered: int = 0  # publications delivered to this node
    takeovers: int = 0  # leases taken from a dead or fenced owner
    leases_lost: int = 0
    gaps: int = 0  # topics whose publications could not all be delivered
    resyncs: int = 0  # subscriber reconnects followed by a gap-free catch-up
    resets: int = 0  # epochs lost (shared state gone)
    sessions_saved: int = 0
    sessions_taken: int = 0
    rtt_ms: float | None = None  # round trip of the last health probe
    history_bytes: int = 0  # publications kept in this process for recovery (memory broker)
    details: dict[str, object] = field(default_factory=dict)


class Handler(Protocol):
    """What the broker calls back. Every method must return promptly and never raise."""

    def on_publication(self, topic: str, position: int, payload: bytes) -> None: ...

    def on_gap(self, topics: frozenset[str]) -> None:
        """Publications of ``topics`` were lost for good (history trimmed while this node was
        cut off): their readers here must be told (their clients resynchronise)."""

    def on_reset(self, epoch: str) -> None:
        """The shared state was lost: positions restart in ``epoch``; saved sessions are gone."""

    def on_lease_renewed(self, lease: Lease) -> None:
        """After a reset, this node holds ``lease``'s topic again, under a new token: its feed
        carries on, publishing with ``lease``."""

    def on_lease_lost(self, topic: str) -> None:
        """This node no longer owns ``topic`` (fenced, expired, or the state was reset)."""

    def on_topic_released(self, topic: str) -> None:
        """The owner of ``topic`` gave it up cleanly: an interested node may take it now."""

    def on_session_taken(self, pid: str) -> None:
        """Another node restored session ``pid``, which this node still held."""

    def on_hand_over(self, topic: str) -> None:
        """The owner of ``topic`` is leaving and offers it (see :meth:`Broker.take_over`)."""


class Broker(abc.ABC):
    """The seam. Positions are ints within :attr:`epoch`; every ``async`` method may raise
    :class:`~kichat.errors.BrokerUnavailable` when the shared state cannot be reached."""

    node_id: str
    #: After a reset (:meth:`Handler.on_reset`), how long topics that nobody holds are left to
    #: their previous owners, which take them back as soon as they reach the new state.
    reclaim_grace: float = 0.0

    @property
    @abc.abstractmethod
    def epoch(self) -> str: ...

    @property
    @abc.abstractmethod
    def position(self) -> int:
        """The position of the last publication delivered to this node (its read watermark):
        every later publication of a subscribed topic is still to come."""

    @abc.abstractmethod
    async def start(self, handler: Handler) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None:
        """Release owned leases cleanly, stop; saved sessions stay for other nodes."""

    # -- topics ------------------------------------------------------------------------------

    @abc.abstractmethod
    async def subscribe(self, topic: str) -> int:
        """Start delivering ``topic``'s publications here; idempotent. Returns the position
        after which every publication of ``topic`` will be delivered."""

    @abc.abstractmethod
    async def unsubscribe(self, topic: str) -> None: ...

    @abc.abstractmethod
    async def history(self, since: Mapping[str, int]) -> History | None:
        """Publications of each topic after its position; ``None`` if some are no longer kept
        (or a position is not of this epoch's range)."""

    # -- ownership ---------------------------------------------------------------------------

    @abc.abstractmethod
    async def acquire(self, topics: Iterable[str]) -> list[Lease]:
        """Take the leases of those ``topics`` that have no owner, or whose owner is dead;
        return what was taken (topics already owned here are not returned again)."""

    @abc.abstractmethod
    def publish(
        self, lease: Lease, payload: bytes, *, key: str | None = None, dedupe: bool = False
    ) -> None:
        """Publish under ``lease``, in call order; never blocks. ``key`` identifies the upstream
        event (kept with the entry); with ``dedupe``, the publication is dropped if an entry with
        the same key is among the topic's recent ones (used after a takeover, when the previous
        owner may have published the same upstream event). A lease found stale is reported
        through :meth:`Handler.on_lease_lost`."""

    @abc.abstractmethod
    async def hand_over(self, lease: Lease) -> bool:
        """Offer the topic to a successor (this node is leaving) and keep publishing until one
        takes it: a successor subscribes upstream first, then :meth:`take_over`, so no event
        falls between the two owners (those both saw are dropped by their ``key``). False if
        there is nobody to offer it to."""

    @abc.abstractmethod
    async def take_over(self, topic: str) -> Lease | None:
        """Take an offered topic (exactly one successor wins); ``None`` if it is not offered."""

    @abc.abstractmethod
    async def known(self, topic: str, keys: Iterable[str]) -> set[str]:
        """Those ``keys`` found among ``topic``'s recent publications (the last few hundred):
        how a new owner tells where the previous one stopped."""

    @abc.abstractmethod
    async def announce(self, lease: Lease, state: TopicState) -> None:
        """Tell interested nodes how the topic's upstream is doing."""

    @abc.abstractmethod
    async def topic_state(self, topic: str, wait: float) -> TopicState | None:
        """The owner's announced state of ``topic``, waiting up to ``wait`` seconds for one;
        ``None``: nobody announced anything (no owner, or one still starting)."""

    @abc.abstractmethod
    async def readers(self, topics: Iterable[str]) -> dict[str, int]:
        """How many nodes (this one included) subscribe to each of ``topics``."""

    @abc.abstractmethod
    async def release(self, lease: Lease) -> None:
        """Give the lease up cleanly (interested nodes are told, and may take it at once)."""

    @property
    @abc.abstractmethod
    def leases(self) -> Mapping[str, Lease]:
        """The leases this node holds now."""

    # -- sessions ----------------------------------------------------------------------------

    @abc.abstractmethod
    async def save_session(self, pid: str, record: bytes, *, live: bool) -> None:
        """Save a session. ``live``: its client is connected here (the record is kept while this
        node lives, and for the recovery window after it dies); otherwise the client is gone and
        the record is kept for the recovery window from now."""

    @abc.abstractmethod
    async def take_session(self, pid: str) -> bytes | None:
        """Take a session (exactly one caller in the cluster gets it). If a node other than this
        one held it, that node is told (:meth:`Handler.on_session_taken`)."""

    @abc.abstractmethod
    async def drop_session(self, pid: str) -> None: ...

    # -- health ------------------------------------------------------------------------------

    @abc.abstractmethod
    def status(self) -> BrokerStatus: ...
