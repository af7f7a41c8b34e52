"""The upstream Pusher client: a pure protocol core, one connection, and the pool the relay uses."""

from kichat.kick.pusher.backoff import Backoff, ReconnectPolicy
from kichat.kick.pusher.connection import ConnectionStatus, PusherConnection
from kichat.kick.pusher.pool import PoolStatus, PusherPool
from kichat.kick.pusher.protocol import (
    ChannelEvent,
    CloseAction,
    ConnectionEstablished,
    ConnectionStale,
    PusherClientProtocol,
    PusherErrorReceived,
    PusherEvent,
    SubscriptionFailed,
    SubscriptionSucceeded,
    classify_close,
)

__all__ = [
    "Backoff",
    "ChannelEvent",
    "CloseAction",
    "ConnectionEstablished",
    "ConnectionStale",
    "ConnectionStatus",
    "PoolStatus",
    "PusherClientProtocol",
    "PusherConnection",
    "PusherErrorReceived",
    "PusherEvent",
    "PusherPool",
    "ReconnectPolicy",
    "SubscriptionFailed",
    "SubscriptionSucceeded",
    "classify_close",
]
