"""The Redis implementation of the cluster seam."""

from kichat.broker.redis.broker import RedisBroker

__all__ = ["RedisBroker"]
