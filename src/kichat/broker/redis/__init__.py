"""The Redis implementation of the cluster seam."""

from kichat.broker.redis.broker import RedisBroker
from kichat.broker.redis.probe import check_redis

__all__ = ["RedisBroker", "check_redis"]
