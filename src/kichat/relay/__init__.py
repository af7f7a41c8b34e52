"""The product's own logic: subscriptions shared across clients, upstream events to rooms."""

from kichat.relay.gateway import Gateway, RoomInfo
from kichat.relay.registry import Registry, RoomKey
from kichat.relay.service import RelayService

__all__ = ["Gateway", "Registry", "RelayService", "RoomInfo", "RoomKey"]
