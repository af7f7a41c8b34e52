"""``kichat.client``: the Python client of a kichat gateway (asyncio, typed).

The counterpart of socket.io-client for this gateway: it reconnects, recovers the session so that
no event is lost or repeated across a network blip, re-subscribes after a gateway restart, and
gives typed views of Kick's common events::

    from kichat.client import Client

    async with Client("http://127.0.0.1:3000") as client:
        await client.subscribe("xqc", 668)
        async for event in client:
            if (chat := event.chat_message()) is not None:
                print(f"{chat.channel_name} | {chat.sender.username}: {chat.text}")

Errors are :class:`kichat.errors.ClientError` and its subclasses, re-exported here.
"""

from kichat.client.client import Client, ClientStats, GatewayWarning, Subscribed, websocket_url
from kichat.client.events import (
    EMOTE_URL,
    Badge,
    ChatMessage,
    ChatroomCleared,
    Emote,
    Event,
    MessageDeleted,
    PinnedMessage,
    ReplyTo,
    Sender,
    Subscription,
    User,
    UserBanned,
    UserUnbanned,
    parse_emotes,
)
from kichat.errors import (
    ClientClosed,
    ClientError,
    ConnectRejected,
    GatewayUnreachable,
    ReplyTimeout,
    SubscribeRefused,
)

__all__ = [
    "EMOTE_URL",
    "Badge",
    "ChatMessage",
    "ChatroomCleared",
    "Client",
    "ClientClosed",
    "ClientError",
    "ClientStats",
    "ConnectRejected",
    "Emote",
    "Event",
    "GatewayUnreachable",
    "GatewayWarning",
    "MessageDeleted",
    "PinnedMessage",
    "ReplyTimeout",
    "ReplyTo",
    "Sender",
    "SubscribeRefused",
    "Subscribed",
    "Subscription",
    "User",
    "UserBanned",
    "UserUnbanned",
    "parse_emotes",
    "websocket_url",
]
