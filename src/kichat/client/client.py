"""The asyncio client: one WebSocket to a kichat gateway, kept alive and recovered.

::

    async with Client("http://127.0.0.1:3000") as client:
        await client.subscribe("xqc", 668)
        async for event in client:
            print(event.name, event.channel_name, event.data)

What it does for you, and how:

* **Reconnects** after any transport failure (a dropped TCP connection, a dead server detected by
  the heartbeat, a gateway restart), waiting a jittered, capped exponential backoff between
  attempts (``backoff_initial`` doubling up to ``backoff_max``, each delay cut by up to 25 % at
  random so that many clients do not come back in step).
* **Recovers the session** like socket.io-client 4.6+ (see :mod:`kichat.client.session`): the
  gateway replays every event missed while the transport was down, in order, exactly once.
* **Re-subscribes** when the gateway could not recover the session (it restarted, or the gap
  outlasted its recovery window): the chatrooms subscribed so far are subscribed again, and a
  refusal arrives in the stream as an ``error`` event (a warning as a ``warning`` event), shaped
  like the gateway's own.
* **Heartbeat**: answers the gateway's pings, and treats a server that sends none within
  ``pingInterval + pingTimeout`` as dead.
* **Bounded memory** (``max_queue``): events wait in a queue of at most ``max_queue`` events for
  the consumer. When it is full the client stops reading the socket, so nothing is dropped
  here: TCP pushes back to the gateway, which holds a bounded amount for the client and then
  cuts it off as a slow client; the client reconnects when the consumer has caught up, and the
  gateway replays what it missed from its recovery log. A consumer that stays behind for longer
  than the gateway's recovery window (120 s by default) or its recovery buffer loses the
  session: the client then re-subscribes, the events in between are lost, and that is logged
  (and yielded as ``connect`` with ``recovered: false`` if ``lifecycle_events`` is on).

Transport: WebSocket only. Long-polling exists for browsers behind proxies that refuse WebSocket
upgrades; a Python program can always open a WebSocket to the gateway (the gateway and the
documented nginx configuration support it), so polling would double the transport code for no
user we know of.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Self
from urllib.parse import urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidStatus,
    InvalidURI,
)

from kichat.client.events import Event
from kichat.client.inbox import Inbox
from kichat.client.replies import GatewayWarning, Subscribed, refusal, rejected, subscribed
from kichat.client.session import (
    AckReceived,
    Connected,
    EventReceived,
    Opened,
    Pinged,
    Refused,
    Send,
    ServerClosed,
    Session,
)
from kichat.errors import (
    ClientClosed,
    ClientError,
    GatewayUnreachable,
    ReplyTimeout,
)
from kichat.kick.pusher.backoff import Backoff
from kichat.sio.errors import ParseError

__all__ = ["Client", "ClientStats", "GatewayWarning", "Subscribed", "websocket_url"]

log = logging.getLogger("kichat.client")

_MAX_MESSAGE: Final = 1024 * 1024  # one Socket.IO packet; Kick's payloads are a few KiB
_LIBRARY_QUEUE: Final = 64  # messages the websockets library buffers before pausing the socket


def websocket_url(url: str, path: str = "/socket.io/") -> str:
    """The Engine.IO WebSocket URL of a gateway.

    ``url`` is the gateway's base URL: ``http(s)://host[:port]`` (``ws(s)://`` works too), or
    just ``host:port``, taken as ``http://``. Its Socket.IO path is ``path``, not part of ``url``
    (behind a reverse proxy that mounts the gateway under a prefix: ``path="/prefix/socket.io/"``).
    Raises :class:`ValueError` with a message meant for the person who typed the URL.
    """
    text = url.strip()
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme.lower())
    if scheme is None:
        raise ValueError(
            f"{url!r} is not a gateway URL: use http://host:port or https://host"
            " (for example http://127.0.0.1:3000)"
        )
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ValueError(f"{url!r}: the port is not a number from 1 to 65535") from None
    if not parts.hostname:
        raise ValueError(f"{url!r} names no host (for example http://127.0.0.1:3000)")
    if parts.path not in ("", "/") or parts.query:
        raise ValueError(
            f"{url!r}: give the gateway's base URL only; the Socket.IO path is a separate"
            f" setting (default {path})"
        )
    clean = "/" + path.strip("/") + "/" if path.strip("/") else "/"
    return urlunsplit((scheme, parts.netloc, clean, "EIO=4&transport=websocket", ""))


@dataclass(slots=True)
class ClientStats:
    connects: int = 0  # successful connections, the first one included
    recovered: int = 0  # reconnections whose session the gateway restored
    not_recovered: int = 0  # reconnections that started a new session (then re-subscribed)
    events: int = 0  # events received from the gateway (replays included)
    queue_full: int = 0  # times the consumer was behind and the socket was paused


class _Lost(Exception):
    """The connection a request was sent on is gone (it is sent again on the next one)."""


class Client:
    """A Socket.IO client of a kichat gateway. See the module's documentation.

    ``url``: the gateway (``http://127.0.0.1:3000``). ``token``: its API key, if it requires
    one. ``auth``: more fields for the Socket.IO handshake. ``headers``: extra HTTP headers for
    the WebSocket handshake. ``reply_timeout``: how long ``subscribe`` waits for an answer,
    reconnections included. ``open_timeout``: how long one connection attempt may take.
    ``max_attempts``: give up after this many failed reconnection attempts in a row (``None``:
    never). ``lifecycle_events``: also yield ``connect`` and ``disconnect`` events.
    """

    def __init__(
        self,
        url: str,
        *,
        path: str = "/socket.io/",
        token: str | None = None,
        auth: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        max_queue: int = 10_000,
        reply_timeout: float = 30.0,
        open_timeout: float = 10.0,
        backoff_initial: float = 0.5,
        backoff_max: float = 15.0,
        max_attempts: int | None = None,
        lifecycle_events: bool = False,
    ) -> None:
        if max_queue < 1:
            raise ValueError("max_queue must be at least 1")
        self.url = url
        self.ws_url = websocket_url(url, path)
        fields = dict(auth or {})
        if token is not None:
            fields["token"] = token
        self.session = Session(fields)
        self.stats = ClientStats()
        self.headers = dict(headers or {})
        self.reply_timeout = reply_timeout
        self.open_timeout = open_timeout
        self.max_attempts = max_attempts
        self.lifecycle_events = lifecycle_events
        self._backoff = Backoff(initial=backoff_initial, maximum=backoff_max)
        self._inbox = Inbox(max_queue)
        self._subscriptions: dict[tuple[str, str], None] = {}
        self._acks: dict[int, asyncio.Future[tuple[Any, ...]]] = {}
        self._ws: ClientConnection | None = None
        self._state = asyncio.Event()  # set whenever connected / failed / closed changes
        self._runner: asyncio.Task[None] | None = None
        self._resubscriber: asyncio.Task[None] | None = None
        self._closed = False

    # -- state -----------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._ws is not None and self.session.connected

    @property
    def recovered(self) -> bool:
        """Whether the current connection restored the previous session."""
        return self.session.recovered

    @property
    def sid(self) -> str | None:
        return self.session.sid

    @property
    def subscriptions(self) -> frozenset[tuple[str, str]]:
        """(channel name, chatroom id) of every chatroom subscribed, as the gateway wrote them."""
        return frozenset(self._subscriptions)

    # -- lifecycle -------------------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the first connection. Raises :class:`GatewayUnreachable` or
        :class:`ConnectRejected`; later failures are retried in the background."""
        if self._runner is not None or self._closed:
            raise RuntimeError("a Client connects once; make a new one")
        ws, connected = await self._open()
        self._runner = asyncio.create_task(self._run(ws, connected))

    async def close(self) -> None:
        """Leave the gateway (it releases this client's subscriptions at once) and end the
        iteration. Events still queued are discarded."""
        if self._closed:
            return
        self._closed = True
        for task in (self._resubscriber, self._runner):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        ws, self._ws = self._ws, None
        if ws is not None:
            with contextlib.suppress(Exception):
                # A Socket.IO DISCONNECT first: a plain close would look like a network blip,
                # and the gateway would keep the session (and its subscriptions) for recovery.
                await ws.send("41")
                await ws.close()
        self._fail_requests(ClientClosed("the client is closed"))
        self._inbox.finish(discard=True)
        self._state.set()

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- events ------------------------------------------------------------------------------------

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Event:
        """The next event. Ends when the client is closed; raises the :class:`ClientError` that
        ended the client otherwise (:class:`ConnectRejected` on a reconnection, reconnection
        attempts exhausted, or :class:`ClientClosed` when the gateway disconnected it)."""
        return await self._inbox.get()

    # -- requests ---------------------------------------------------------------------------------

    async def subscribe(self, channel_name: str, chatroom_id: int | str) -> Subscribed:
        """Subscribe to a chatroom (``chatroom.id`` of ``GET /api/v2/channels/{channel}``).

        Returns the gateway's reply; a warning in it (``stream_events_unavailable`` when the
        channel's lookup failed or the chatroom id is not the channel's) means chat flows but
        stream events do not. Raises :class:`SubscribeRefused` with the gateway's error code,
        or :class:`ReplyTimeout`. Subscribing twice is harmless.
        """
        payload = {"channelName": channel_name, "chatroomId": chatroom_id}
        reply = await self._request("subscribe", payload)
        result = subscribed(reply, payload)
        self._subscriptions[(result.channel_name, result.chatroom_id)] = None
        return result

    async def unsubscribe(self, channel_name: str, chatroom_id: int | str) -> None:
        """Stop receiving a chatroom's events (idempotent)."""
        payload = {"channelName": channel_name, "chatroomId": chatroom_id}
        # Forget it first, so that a reconnection meanwhile does not subscribe it again.
        self._subscriptions.pop((channel_name.lower(), str(chatroom_id).lstrip("0")), None)
        reply = await self._request("unsubscribe", payload)
        if not isinstance(reply, Mapping) or reply.get("ok") is not True:
            raise refusal(reply, payload)
        self._subscriptions.pop((str(reply.get("channelName")), str(reply.get("chatroomId"))), None)

    async def _request(self, name: str, payload: Mapping[str, Any]) -> Any:
        """Send an event with an acknowledgement and return the reply's first argument. A
        request cut by a lost connection is sent again on the next one (subscribe and
        unsubscribe are idempotent)."""
        try:
            async with asyncio.timeout(self.reply_timeout):
                while True:
                    ws = await self._wait_connected()
                    ack_id, packet = self.session.request(name, dict(payload))
                    future: asyncio.Future[tuple[Any, ...]] = (
                        asyncio.get_running_loop().create_future()
                    )
                    self._acks[ack_id] = future
                    try:
                        await ws.send(packet.text)
                        args = await future
                    except (_Lost, ConnectionClosed):
                        continue
                    finally:
                        self._acks.pop(ack_id, None)
                    return args[0] if args else None
        except TimeoutError:
            raise ReplyTimeout(
                f"no reply to {name} from {self.url} within {self.reply_timeout:g} s"
            ) from None

    async def _wait_connected(self) -> ClientConnection:
        while True:
            if self._closed:
                raise ClientClosed("the client is closed")
            if self._inbox.ended and isinstance(self._inbox.end, ClientError):
                raise self._inbox.end
            if self._runner is None:
                raise RuntimeError("connect() the client first (or use `async with`)")
            ws = self._ws
            if ws is not None and self.session.connected:
                return ws
            self._state.clear()
            await self._state.wait()

    def _fail_requests(self, error: BaseException) -> None:
        for future in self._acks.values():
            if not future.done():
                future.set_exception(error)
        self._acks.clear()

    # -- connections -------------------------------------------------------------------------------

    async def _open(self) -> tuple[ClientConnection, Connected]:
        """One connection attempt, up to the namespace's CONNECT reply."""
        self.session.begin()
        ws: ClientConnection | None = None
        try:
            async with asyncio.timeout(self.open_timeout):
                ws = await connect(
                    self.ws_url,
                    additional_headers=self.headers or None,
                    compression=None,  # the gateway does not negotiate it
                    ping_interval=None,  # Engine.IO's heartbeat does that job
                    max_size=_MAX_MESSAGE,
                    max_queue=_LIBRARY_QUEUE,
                    close_timeout=1.0,
                    open_timeout=None,  # bounded by our own timeout, handshake included
                )
                return ws, await self._handshake(ws)
        except BaseException as exc:
            if ws is not None:
                ws.transport.abort()
            if isinstance(exc, ClientError):
                raise
            if isinstance(exc, TimeoutError):
                raise GatewayUnreachable(
                    self.url, f"no Socket.IO handshake within {self.open_timeout:g} s"
                ) from None
            if isinstance(exc, OSError | InvalidURI | InvalidHandshake | ConnectionClosed):
                raise GatewayUnreachable(self.url, _describe(exc, self.ws_url)) from exc
            if isinstance(exc, ParseError):
                raise GatewayUnreachable(self.url, f"not a Socket.IO 4 server ({exc})") from exc
            raise

    async def _handshake(self, ws: ClientConnection) -> Connected:
        """Engine.IO OPEN, then the namespace's CONNECT and its reply."""
        while True:
            for happening in self.session.receive(await ws.recv()):
                if isinstance(happening, Send):
                    await ws.send(happening.text)
                elif isinstance(happening, Connected):
                    return happening
                elif isinstance(happening, Refused):
                    raise rejected(happening)
                elif isinstance(happening, ServerClosed):
                    raise GatewayUnreachable(self.url, happening.reason)

    async def _run(self, ws: ClientConnection, connected: Connected) -> None:
        try:
            while True:
                self._connected(ws, connected)
                reason = await self._read(ws)
                self._disconnected(reason)
                ws.transport.abort()
                ws, connected = await self._reconnect()
        except Exception as exc:
            if isinstance(exc, ClientError):
                log.warning("kichat client stopped: %s", exc)
            else:
                log.exception("kichat client failed")
            if self._ws is not None:
                self._ws.transport.abort()
                self._ws = None
            self.session.connected = False
            self._fail_requests(exc)
            self._inbox.finish(exc)
            self._state.set()

    def _connected(self, ws: ClientConnection, connected: Connected) -> None:
        first = self.stats.connects == 0
        self.stats.connects += 1
        self._backoff.reset()
        self._ws = ws
        if not first:
            if connected.recovered:
                self.stats.recovered += 1
                log.info("reconnected to %s, session recovered", self.url)
            else:
                self.stats.not_recovered += 1
                if self._subscriptions:
                    log.warning(
                        "reconnected to %s with a new session (the gateway restarted or the gap"
                        " was too long): events in between are lost; subscribing again",
                        self.url,
                    )
                    self._resubscribe()
        if self.lifecycle_events:
            self._inbox.put_nowait(
                Event("connect", {"sid": connected.sid, "recovered": connected.recovered})
            )
        self._state.set()

    def _disconnected(self, reason: str) -> None:
        self._ws = None
        self.session.connected = False
        self._fail_requests(_Lost())
        log.info("connection to %s lost (%s)", self.url, reason)
        if self.lifecycle_events:
            self._inbox.put_nowait(Event("disconnect", {"reason": reason}))
        self._state.set()

    async def _reconnect(self) -> tuple[ClientConnection, Connected]:
        failures = 0
        while True:
            await asyncio.sleep(self._backoff.next())
            try:
                return await self._open()
            except GatewayUnreachable as exc:
                failures += 1
                log.info("reconnection attempt %d failed: %s", failures, exc)
                if self.max_attempts is not None and failures >= self.max_attempts:
                    raise

    async def _read(self, ws: ClientConnection) -> str:
        """Read one connection until it ends; return why (raise :class:`ClientClosed` if the
        gateway disconnected this client on purpose)."""
        loop = asyncio.get_running_loop()
        info = self.session.open
        assert info is not None
        patience = info.ping_interval + info.ping_timeout
        deadline = loop.time() + patience
        inbox = self._inbox
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    message = await ws.recv()
                happenings = self.session.receive(message)
            except TimeoutError:
                return f"no ping from the gateway within {patience:g} s"
            except ConnectionClosed:
                return "transport closed"
            except ParseError as exc:
                log.warning("protocol error from %s: %s", self.url, exc)
                return f"protocol error: {exc}"
            for happening in happenings:
                if isinstance(happening, EventReceived):
                    self.stats.events += 1
                    args = happening.args
                    event = Event(happening.name, args[0] if args else None)
                    if inbox.full():
                        # Back-pressure: stop reading until the consumer makes room. The pause
                        # is not the server's silence, so it does not count against it.
                        self.stats.queue_full += 1
                        paused = loop.time()
                        await inbox.put(event)
                        deadline += loop.time() - paused
                    else:
                        inbox.put_nowait(event)
                elif isinstance(happening, AckReceived):
                    future = self._acks.get(happening.id)
                    if future is not None and not future.done():
                        future.set_result(happening.args)
                elif isinstance(happening, Send):
                    try:
                        await ws.send(happening.text)
                    except ConnectionClosed:
                        return "transport closed"
                elif isinstance(happening, Pinged):
                    deadline = loop.time() + patience
                elif isinstance(happening, ServerClosed):
                    if happening.final:
                        raise ClientClosed(happening.reason)
                    return happening.reason
                elif isinstance(happening, Connected | Refused | Opened):
                    return f"unexpected {type(happening).__name__} packet"

    # -- re-subscribing after a new session ----------------------------------------------------

    def _resubscribe(self) -> None:
        if self._resubscriber is not None:
            self._resubscriber.cancel()
        self._resubscriber = asyncio.create_task(self._resubscribe_all(list(self._subscriptions)))

    async def _resubscribe_all(self, keys: list[tuple[str, str]]) -> None:
        for channel_name, chatroom_id in keys:
            payload = {"channelName": channel_name, "chatroomId": chatroom_id}
            delay = 1.0
            while (channel_name, chatroom_id) in self._subscriptions:
                try:
                    reply = await self._request("subscribe", payload)
                except ReplyTimeout as exc:
                    reply = {
                        **payload,
                        "ok": False,
                        "error": {"code": "no_reply", "message": str(exc)},
                    }
                except ClientError:
                    return  # the client is closed or stopped
                problem = reply.get("error") if isinstance(reply, Mapping) else None
                if isinstance(problem, Mapping) and problem.get("code") == "rate_limited":
                    await asyncio.sleep(delay)  # many chatrooms at once: pace them
                    delay = min(delay * 2, 10.0)
                    continue
                if not isinstance(reply, Mapping) or reply.get("ok") is not True:
                    self._subscriptions.pop((channel_name, chatroom_id), None)
                    log.warning("re-subscribing to %s was refused: %s", channel_name, reply)
                    self._inbox.put_nowait(Event("error", reply))
                elif "warning" in reply:
                    self._inbox.put_nowait(Event("warning", reply))
                break


def _describe(exc: BaseException, ws_url: str) -> str:
    """Why a connection could not be opened, in words an operator can act on."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is the gateway running, on this port?)"
    if isinstance(exc, socket.gaierror):
        return f"unknown host ({exc.strerror or exc})"
    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        path = urlsplit(ws_url).path
        return f"HTTP {status} for {path}: not a kichat gateway's Socket.IO endpoint?"
    if isinstance(exc, ConnectionClosed):
        return "the connection closed during the handshake"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__
