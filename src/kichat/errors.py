"""The gateway's exception tree.

Every error kichat raises on purpose derives from :class:`KichatError`, so callers can catch
the whole family at a boundary and translate it (``raise ... from exc``) into what that
boundary speaks: a JSON error body, a Socket.IO ``{ok: false, error}`` reply, a log line.
Names never shadow built-ins such as ``TimeoutError`` or ``ConnectionError``.

::

    KichatError
    ├── ConfigError                   invalid configuration (all problems listed at once)
    ├── ClientInputError              a client sent something we refuse (has a stable ``code``)
    ├── BrokerUnavailable             the cluster's shared state (Redis) cannot be reached now
    └── UpstreamError                 anything about Kick, Pusher or the network towards them
        ├── PusherError
        │   ├── PusherProtocolError   a frame we cannot understand
        │   ├── PusherFatalError      close/error code 4000-4099: do not reconnect unchanged
        │   ├── PusherUnavailable     no usable connection right now (transient)
        │   └── SubscriptionError     Kick refused or never acknowledged a subscription
        ├── FeedUnavailable           the node feeding a chatroom (maybe another) reports failure
        └── KickApiError              Kick's REST API (``status``: the HTTP status we answer)
            ├── ChannelNotFound       404 from Kick
            ├── KickBlocked           Kick's edge refused us (403 "Request blocked by ...")
            ├── KickTimeout           no answer in time
            └── KickBadResponse       5xx, an unexpected status, or a body that is not our JSON
    └── ClientError                   kichat.client, the Python client of a gateway
        ├── GatewayUnreachable        no connection could be opened (``url``; the cause chained)
        ├── ConnectRejected           the gateway refused the connection (``code``, ``message``)
        ├── SubscribeRefused          a subscribe answered ``{ok: false}`` (``code``, ``message``)
        ├── ReplyTimeout              no reply to a request in time
        └── ClientClosed              the client was closed, or the gateway disconnected it

The Socket.IO server (:mod:`kichat.sio`) has its own small tree in :mod:`kichat.sio.errors`
because it knows nothing of Kick and could live in its own distribution.
"""

from __future__ import annotations


class KichatError(Exception):
    """Base class of every error kichat raises on purpose."""


class ConfigError(KichatError):
    """The configuration is invalid. ``problems`` lists every problem found, not just the first."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems) if self.problems else "invalid configuration")


class ClientInputError(KichatError):
    """A client asked for something we refuse. ``code`` is stable and documented."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}")

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


class BrokerUnavailable(KichatError):
    """The cluster's shared state (Redis) cannot be reached right now; it may work later."""


class UpstreamError(KichatError):
    """Something went wrong talking to Kick (Pusher or REST)."""


class PusherError(UpstreamError):
    """Base class for errors of the upstream Pusher connection."""


class PusherProtocolError(PusherError):
    """A frame from the Pusher server could not be understood."""


class PusherFatalError(PusherError):
    """Pusher said 4000-4099: reconnecting unchanged cannot help (wrong key, app disabled, ...)."""

    def __init__(self, code: int, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"pusher error {code}: {message}")


class PusherUnavailable(PusherError):
    """No upstream connection can carry the request right now; it may work later."""


class SubscriptionError(PusherError):
    """A channel subscription was refused, or never acknowledged after all retries."""

    def __init__(self, channel: str, message: str) -> None:
        self.channel = channel
        self.message = message
        super().__init__(f"subscription to {channel!r} failed: {message}")


class FeedUnavailable(UpstreamError):
    """The node that feeds a topic from Kick (in a cluster, maybe another node) reported that it
    cannot, or nobody did in time. ``code`` is the client-facing error code."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(message)


class KickApiError(UpstreamError):
    """Kick's REST API failed. ``status`` is what the gateway answers its own client with."""

    status: int = 502
    code: str = "upstream_error"

    def __init__(self, message: str, *, upstream_status: int | None = None) -> None:
        self.message = message
        self.upstream_status = upstream_status
        super().__init__(message)


class ChannelNotFound(KickApiError):
    status = 404
    code = "channel_not_found"

    def __init__(self, message: str, *, body: object = None) -> None:
        super().__init__(message, upstream_status=404)
        self.body = body


class KickBlocked(KickApiError):
    status = 502
    code = "upstream_blocked"


class KickTimeout(KickApiError):
    status = 504
    code = "upstream_timeout"


class KickBadResponse(KickApiError):
    status = 502
    code = "upstream_bad_response"


class ClientError(KichatError):
    """Base class of :mod:`kichat.client`'s errors: what a gateway said or did to the client."""


class GatewayUnreachable(ClientError):
    """No connection to the gateway could be opened (refused, DNS, TLS, not Socket.IO...)."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"cannot connect to {url}: {reason}")


class ConnectRejected(ClientError):
    """The gateway refused the Socket.IO connection (``connect_error``): ``code`` is its stable
    code (``unauthorized``, ``too_many_connections``) when it gave one."""

    def __init__(self, code: str, message: str, data: object = None) -> None:
        self.code = code
        self.message = message
        self.data = data
        super().__init__(f"the gateway refused the connection: {code}: {message}")


class SubscribeRefused(ClientError):
    """A ``subscribe`` was answered ``{ok: false, error: {code, message}}``: ``code`` is one of
    the gateway's documented codes (``invalid_chatroom_id``, ``rate_limited``, ...)."""

    def __init__(
        self, code: str, message: str, *, channel_name: str | None, chatroom_id: str | None
    ) -> None:
        self.code = code
        self.message = message
        self.channel_name = channel_name
        self.chatroom_id = chatroom_id
        super().__init__(f"{code}: {message}")


class ReplyTimeout(ClientError):
    """The gateway did not answer a request in time."""


class ClientClosed(ClientError):
    """The client is closed (by its owner, or because the gateway disconnected it for good)."""
