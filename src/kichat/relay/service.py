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
from kichat.kick.names import parse_chatroom_id, parse_slug
from kichat.limits import ApiKeys, ConnectionCounter, Network, RateLimiter, client_ip
from kichat.relay.gateway import Gateway, RoomInfo
from kichat.relay.registry import Registry, RoomKey
from kichat.relay.sessions import RelaySessions
from kichat.sio import Ack, ConnectRefused, Namespace, Socket

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
        sessions.on_restored = self._restored
        # How long a subscribe reply waits to say whether stream events work; chat flows anyway.
        self.stream_lookup_wait = stream_lookup_wait
        self.max_subscriptions = max_subscriptions
        self.rate = RateLimiter(subscribe_rate, subscribe_window)
        self.connections = ConnectionCounter(connections_per_ip)
        self.api_keys = api_keys or ApiKeys()
        self.trusted_proxies = tuple(trusted_proxies)
        self.stats = ServiceStats()
        nsp.on_connect(self._connect)
        nsp.on_disconnect(self._disconnect)
        nsp.on("subscribe")(self._subscribe)
        nsp.on("unsubscribe")(self._unsubscribe)

    # -- admission -----------------------------------------------------------------------------

    def _connect(self, sock: Socket, auth: dict[str, Any]) -> None:
        if not self.api_keys.accepts(auth.get("token")):
            self.stats.refused_connections["unauthorized"] += 1
            raise ConnectRefused(
                "unauthorized",
                {"code": "unauthorized", "message": "pass a valid API key as auth: {token}"},
            )
        ip = client_ip(
            sock.peer, sock.handshake.headers.get("x-forwarded-for"), self.trusted_proxies
        )
        if not self.connections.acquire(ip):
            self.stats.refused_connections["too_many_connections"] += 1
            limit = self.connections.limit
            raise ConnectRefused(
                f"too many connections from your address (limit {limit})",
                {"code": "too_many_connections", "limit": limit},
            )
        sock.data["ip"] = ip
        self.sessions.connected(sock)

    def _restored(self, sock: Socket) -> None:
        """A session from another node (or from before this node restarted) continues here."""
        ip = sock.data.get("ip")
        if isinstance(ip, str):
            self.connections.acquire(ip)  # counted even past the limit: it was admitted once

    def _disconnect(self, sock: Socket, reason: str) -> None:
        ip = sock.data.get("ip")
        if isinstance(ip, str):
            self.connections.release(ip)
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
