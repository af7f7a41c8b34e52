"""The relay's Socket.IO face: ``subscribe`` / ``unsubscribe`` and connection admission.

Contract (the hosted Kichat API's, extended with acknowledgements and clear errors)::

    socket.emit("subscribe", {channelName: "xqc", chatroomId: "668"}, reply => ...)
      reply = {ok: true, channelName: "xqc", chatroomId: "668", streamEvents: true}
            | {ok: true, ..., streamEvents: false, warning: {code, message}}
            | {ok: false, channelName?, chatroomId?, error: {code, message}}

A client that passes no acknowledgement callback gets failures as an ``error`` event and
warnings as a ``warning`` event, with the same shapes; success is silent, as on the hosted
API. Error codes: ``invalid_payload``, ``invalid_channel_name``, ``invalid_chatroom_id``,
``rate_limited``, ``too_many_subscriptions``, ``subscription_failed``,
``upstream_unavailable``; warning codes: ``stream_events_unavailable`` (chat flows, stream events
do not) and ``stream_events_pending`` (chat flows; the channel lookup that stream events need
had not finished when the reply was due, and they start when it does).

Invalid input is refused here and never reaches Kick.

Admission, per client IP (``X-Forwarded-For`` believed only from trusted proxies):

* At the Engine.IO handshake (both transports): an API key presented there (``?token=``,
  ``X-API-Key`` or ``Authorization: Bearer``) must be valid, else HTTP 401. Sessions that have
  not joined the namespace yet are bounded per IP and in total by the Socket.IO server
  (:mod:`kichat.sio.admission`) and end after ``connect_timeout``.
* At the namespace CONNECT: the key, from the handshake or ``auth: {token}``, and the live
  connection limit; refusals are CONNECT_ERROR with ``data.code`` ``unauthorized`` or
  ``too_many_connections``, which socket.io-client and python-socketio report as is.
* A socket waiting to be recovered does not count as live (a reloaded page must not lock its
  user out); the Socket.IO server bounds those per IP. Recovering one counts it again.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from kichat.errors import (
    ClientInputError,
    FeedUnavailable,
    PusherFatalError,
    SubscriptionError,
    UpstreamError,
)
from kichat.http import Request
from kichat.kick.names import parse_chatroom_id, parse_slug
from kichat.limits import ApiKeys, ConnectionCounter, Network, RateLimiter, client_ip
from kichat.relay.gateway import Gateway, RoomInfo
from kichat.relay.registry import Registry, RoomKey
from kichat.relay.sessions import RelaySessions
from kichat.sio import Ack, ConnectRefused, Namespace, Socket
from kichat.sio.admission import Refusal

log = logging.getLogger("kichat.relay")


@dataclass
class ServiceStats:
    subscribes: Counter[str] = field(default_factory=Counter)  # "ok" or an error code
    unsubscribes: int = 0
    refused_connections: Counter[str] = field(default_factory=Counter)


class RelayService:
    def __init__(
        self,
        nsp: Namespace,
        gateway: Gateway,
        registry: Registry,
        sessions: RelaySessions,
        *,
        max_subscriptions: int = 50,
        subscribe_rate: int = 20,
        subscribe_window: float = 10.0,
        connections_per_ip: int = 10,
        api_keys: ApiKeys | None = None,
        trusted_proxies: Iterable[Network] = (),
        upstream_refusal: Callable[[], str | None] = lambda: None,
        stream_lookup_wait: float = 2.0,
    ) -> None:
        self.nsp = nsp
        # Why Kick refuses the gateway as a whole (a fatal Pusher error), or None.
        self.upstream_refusal = upstream_refusal
        self.gateway = gateway
        self.registry = registry
        self.sessions = sessions
        sessions.nsp = nsp
        # How long a subscribe reply waits to say whether stream events work; chat flows anyway.
        self.stream_lookup_wait = stream_lookup_wait
        self.max_subscriptions = max_subscriptions
        self.rate = RateLimiter(subscribe_rate, subscribe_window)
        self.connections = ConnectionCounter(connections_per_ip)
        self.api_keys = api_keys or ApiKeys()
        self.trusted_proxies = tuple(trusted_proxies)
        self.stats = ServiceStats()
        nsp.server.client_key = self.client_ip
        nsp.server.allow_request = self._admit
        nsp.on_connect(self._connect)
        nsp.on_disconnect(self._disconnect)
        nsp.on_detach(self._detached)
        nsp.on_restore(self._restored)
        nsp.on("subscribe")(self._subscribe)
        nsp.on("unsubscribe")(self._unsubscribe)

    # -- admission -----------------------------------------------------------------------------

    def client_ip(self, request: Request) -> str:
        return client_ip(request.peer, request.headers.get("x-forwarded-for"), self.trusted_proxies)

    async def _admit(self, request: Request) -> Refusal | None:
        """The Engine.IO handshake: a key presented there must be valid."""
        key = handshake_key(request)
        if key is not None and not self.api_keys.accepts(key):
            self.stats.refused_connections["unauthorized"] += 1
            return Refusal(401, "unauthorized", dict(_UNAUTHORIZED))
        return None

    def _connect(self, sock: Socket, auth: dict[str, Any]) -> None:
        keys = self.api_keys
        if keys.required and not (
            keys.accepts(auth.get("token")) or keys.accepts(handshake_key(sock.handshake))
        ):
            self.stats.refused_connections["unauthorized"] += 1
            raise ConnectRefused("unauthorized", dict(_UNAUTHORIZED))
        self._count(sock)
        self.sessions.connected(sock)

    def _count(self, sock: Socket) -> None:
        """Take a live connection slot for the socket's client IP, or refuse it."""
        ip = self.client_ip(sock.handshake)
        if not self.connections.acquire(ip):
            self.stats.refused_connections["too_many_connections"] += 1
            limit = self.connections.limit
            raise ConnectRefused(
                f"too many connections from your address (limit {limit})",
                {"code": "too_many_connections", "limit": limit},
            )
        sock.data["ip"] = ip  # present while the socket holds a slot

    def _release(self, sock: Socket) -> None:
        ip = sock.data.pop("ip", None)
        if isinstance(ip, str):
            self.connections.release(ip)

    def _detached(self, sock: Socket) -> None:
        self._release(sock)

    def _restored(self, sock: Socket) -> None:
        self._count(sock)  # from the new connection's address

    def _disconnect(self, sock: Socket, reason: str) -> None:
        self._release(sock)
        for key in self.registry.remove_all(sock.sid):
            self.gateway.release(key)
        self.sessions.closed(sock, reason)

    # -- subscribe / unsubscribe ---------------------------------------------------------------

    async def _subscribe(self, sock: Socket, args: list[Any], ack: Ack | None) -> None:
        try:
            key = _parse(args, "subscribe")
            if key.room in sock.rooms:
                self._ok(sock, ack, key, self.gateway.info(key))
                return
            self._check_rate(sock)
            self._check_capacity(sock)
            self._check_upstream()
        except ClientInputError as exc:
            self._fail(sock, ack, exc, args)
            return
        self.registry.add(key, sock.sid)
        try:
            await self.gateway.acquire(key)
        except UpstreamError as exc:
            if self.registry.remove(key, sock.sid):
                self.gateway.release(key)
            self._fail(sock, ack, _upstream_problem(exc), args)
            return
        if not sock.connected:
            return  # gone while we waited; its disconnect already cleaned the registry up
        sock.join(key.room)  # chat flows from here on
        self.sessions.joined(sock, key)
        info = await self.gateway.stream_info(key, within=self.stream_lookup_wait)
        self._ok(sock, ack, key, info)

    def _unsubscribe(self, sock: Socket, args: list[Any], ack: Ack | None) -> None:
        try:
            key = _parse(args, "unsubscribe")
            self._check_rate(sock)
        except ClientInputError as exc:
            self._fail(sock, ack, exc, args)
            return
        self.stats.unsubscribes += 1
        sock.leave(key.room)
        if self.registry.remove(key, sock.sid):
            self.gateway.release(key)
        self.sessions.left(sock)
        if ack is not None:
            ack({"ok": True, **_describe(key)})

    def _check_capacity(self, sock: Socket) -> None:
        if len(self.registry.keys_of(sock.sid)) >= self.max_subscriptions:
            raise ClientInputError(
                "too_many_subscriptions",
                f"a client may subscribe to at most {self.max_subscriptions} chatrooms",
            )

    def _check_upstream(self) -> None:
        # A room already active would answer from memory: while Kick refuses the gateway,
        # nothing reaches it, so a new subscriber hears so, like the subscriber of a new room.
        refusal = self.upstream_refusal()
        if refusal is not None:
            raise ClientInputError(
                "upstream_unavailable", f"Kick's chat service refused the gateway ({refusal})"
            )

    def _check_rate(self, sock: Socket) -> None:
        wait = self.rate.hit(sock.sid)
        if wait:
            raise ClientInputError(
                "rate_limited",
                f"too many subscribe/unsubscribe calls; try again in {wait:.1f} s",
            )

    # -- replies -------------------------------------------------------------------------------

    def _ok(self, sock: Socket, ack: Ack | None, key: RoomKey, info: RoomInfo | None) -> None:
        self.stats.subscribes["ok"] += 1
        reply: dict[str, Any] = {"ok": True, **_describe(key)}
        reply["streamEvents"] = bool(info and info.stream_events)
        if info is not None and info.warning_code is not None:
            reply["warning"] = {"code": info.warning_code, "message": info.warning}
        if ack is not None:
            ack(reply)
        elif "warning" in reply:
            sock.emit("warning", reply)

    def _fail(self, sock: Socket, ack: Ack | None, exc: ClientInputError, args: list[Any]) -> None:
        self.stats.subscribes[exc.code] += 1
        reply: dict[str, Any] = {"ok": False, **_echo(args), "error": exc.as_dict()}
        if ack is not None:
            ack(reply)
        else:
            sock.emit("error", reply)


_UNAUTHORIZED = {
    "code": "unauthorized",
    "message": "pass a valid API key as auth: {token}, ?token=, X-API-Key or Authorization: Bearer",
}


def handshake_key(request: Request) -> str | None:
    """The API key a client presented with its HTTP request, if any."""
    key = request.headers.get("x-api-key") or request.query.get("token")
    if key:
        return key.strip()
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _parse(args: list[Any], what: str) -> RoomKey:
    payload = args[0] if args else None
    if not isinstance(payload, dict):
        raise ClientInputError(
            "invalid_payload",
            f'{what} expects one object argument: {{"channelName": "xqc", "chatroomId": "668"}}',
        )
    chatroom_id = parse_chatroom_id(payload.get("chatroomId"))
    slug = parse_slug(payload.get("channelName"))
    return RoomKey(chatroom_id, slug)


def _describe(key: RoomKey) -> dict[str, str]:
    return {"channelName": key.slug, "chatroomId": str(key.chatroom_id)}


def _echo(args: list[Any]) -> dict[str, str]:
    """The parts of a failed request that are valid, to say which request failed."""
    payload = args[0] if args and isinstance(args[0], dict) else {}
    echoed: dict[str, str] = {}
    with contextlib.suppress(ClientInputError):
        echoed["channelName"] = parse_slug(payload.get("channelName"))
    with contextlib.suppress(ClientInputError):
        echoed["chatroomId"] = str(parse_chatroom_id(payload.get("chatroomId")))
    return echoed


def _upstream_problem(exc: UpstreamError) -> ClientInputError:
    if isinstance(exc, FeedUnavailable):
        return ClientInputError(exc.code, exc.message)
    if isinstance(exc, SubscriptionError):
        return ClientInputError(
            "subscription_failed", f"Kick did not accept the subscription: {exc.message}"
        )
    if isinstance(exc, PusherFatalError):
        return ClientInputError(
            "upstream_unavailable",
            f"Kick's chat service refused the gateway (Pusher error {exc.code}: {exc.message})",
        )
    return ClientInputError("upstream_unavailable", f"Kick's chat service is unavailable: {exc}")
