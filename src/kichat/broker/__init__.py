"""The cluster seam (:mod:`.base`) and its implementations: :class:`MemoryBroker` (one
process, the default) and :class:`~kichat.broker.redis.RedisBroker` (imported on demand)."""

from kichat.broker.base import (
    Broker,
    BrokerStatus,
    Handler,
    History,
    Lease,
    Publication,
    TopicState,
)
from kichat.broker.memory import MemoryBroker

__all__ = [
    "Broker",
    "BrokerStatus",
    "Handler",
    "History",
    "Lease",
    "MemoryBroker",
    "Publication",
    "TopicState",
]
