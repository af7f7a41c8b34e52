"""Kick's REST API: channel lookup, chat history, and the two user endpoints we forward.

:class:`KickApi` wraps one ``httpx.AsyncClient`` and adds what a gateway in front of a moody
upstream needs:

* a channel cache with a TTL (a shorter one for "not found"), bounded in size (oldest out);
* single-flight: concurrent lookups of one slug share one request, which keeps running when
  the caller that started it is cancelled, so the others still get their answer;
* retries of GETs with exponential backoff and jitter for timeouts, connection errors, 5xx and
  429 (``Retry-After`` honoured up to ``backoff_max``), plus one delayed retry for a 403
  (Kick's edge blocks come and go, wire.md §4.4); never a retry for 404 or a non-GET;
* errors mapped onto :mod:`kichat.errors` (404 ``ChannelNotFound``, edge 403 ``KickBlocked``,
  ``KickTimeout``, everything else ``KickBadResponse`` with ``upstream_status``);
* plain counters in :attr:`KickApi.stats` for metrics and health.

The cookie jar is disabled on purpose: :meth:`KickApi.forward` carries users' session cookies,
and a shared jar would hand one user's ``Set-Cookie`` to the next request, whoever sent it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from functools import partial
from http.cookiejar import CookieJar, DefaultCookiePolicy
from types import TracebackType
from typing import Any, NamedTuple, Self

import httpx
import orjson

from kichat.errors import (
    ChannelNotFound,
    ClientInputError,
    KickApiError,
    KickBadResponse,
    KickBlocked,
    KickTimeout,
)
from kichat.kick.names import parse_channel_id, parse_chatroom_id, parse_slug

__all__ = [
    "DEFAULT_HEADERS",
    "OUTCOMES",
    "ForwardResponse",
    "KickApi",
    "KickApiStats",
    "KickChannel",
]

log = logging.getLogger("kichat.kick.api")

# Kick's edge is friendlier to something that looks like a browser than to "python-httpx".
DEFAULT_HEADERS: Mapping[str, str] = {
    "User-Agent": (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko)"
        " Chrome/131.0.0.0 Safari/537.36"
    ),
    "Accept": "application/json",
    "Accept-Language": "en-US,en;q=0.9",
}
OUTCOMES = ("ok", "not_found", "blocked", "timeout", "error")
# A channel document is tens of KB; refuse to buffer whatever a broken upstream streams at us.
MAX_BODY_BYTES = 8 * 1024 * 1024
_CALLER_HEADERS = {"x-kick-cookie": "Cookie", "authorization": "Authorization"}
_FORWARD_PATH = re.compile(r"/api/v[0-9]+(/[A-Za-z0-9_-]+)+(\?[A-Za-z0-9_.~=&%-]*)?")
_FORWARD_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})


@dataclass(frozen=True, slots=True)
class KickChannel:
    """A channel lookup. ``body`` is Kick's response exactly as received (for pass-through);
    ``data`` is its decoded channel object, shared by every cache hit: treat it as read-only."""

    slug: str
    id: int
    chatroom_id: int
    body: bytes
    data: dict[str, Any]


@dataclass(slots=True)
class KickApiStats:
    """Counters for metrics and health, read at scrape time.

    ``requests`` counts HTTP attempts sent to Kick by outcome (retries included);
    ``cache_misses`` counts channel lookups not answered from the cache, of which
    ``inflight_joined`` joined a request already in flight. ``upstream_state`` is the class of
    the latest attempt: ``unknown`` (none yet), ``ok``, ``blocked``, ``timeout`` or ``error``.
    """

    requests: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    cache_hits: int = 0
    cache_misses: int = 0
    inflight_joined: int = 0
    retries: int = 0
    upstream_state: str = "unknown"


class ForwardResponse(NamedTuple):
    """Kick's answer to a forwarded request: ``headers`` holds only ``content-type`` (and
    ``retry-after``) when Kick sent them."""

    status: int
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True, slots=True)
class _Reply:
    status: int
    headers: httpx.Headers
    body: bytes


@dataclass(frozen=True, slots=True)
class _NotFound:
    body: object


class _Failure(Exception):
    """One attempt got no HTTP answer (``outcome`` is ``timeout`` or ``error``)."""

    def __init__(self, outcome: str, message: str) -> None:
        super().__init__(message)
        self.outcome = outcome
        self.message = message

    def to_error(self) -> KickApiError:
        cls = KickTimeout if self.outcome == "timeout" else KickBadResponse
        return cls(self.message)


class KickApi:
    """Kick's REST API client. Use ``async with KickApi(...) as api`` or call :meth:`aclose`."""

    def __init__(
        self,
        base_url: str = "https://kick.com",
        *,
        timeout: float = 10.0,
        retries: int = 2,
        proxy: str | None = None,
        headers: Mapping[str, str] | None = None,
        cache_ttl: float = 300.0,
        not_found_ttl: float = 30.0,
        max_cache_entries: int = 10_000,
        backoff_initial: float = 0.5,
        backoff_max: float = 8.0,
        blocked_retry_delay: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if retries < 0 or max_cache_entries < 1 or timeout <= 0:
            raise ValueError("retries >= 0, max_cache_entries >= 1 and timeout > 0 are required")
        self.base_url = base_url.rstrip("/")
        self.stats = KickApiStats()
        self._timeout = timeout
        self._retries = retries
        self._cache_ttl = cache_ttl
        self._not_found_ttl = not_found_ttl
        self._max_cache_entries = max_cache_entries
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._blocked_retry_delay = blocked_retry_delay
        self._clock = clock
        self._headers = {**DEFAULT_HEADERS, **(headers or {})}
        self._cache: OrderedDict[str, tuple[float, KickChannel | _NotFound]] = OrderedDict()
        self._inflight: dict[str, asyncio.Task[KickChannel]] = {}
        self._closed = False
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=timeout,
            proxy=proxy or None,
            # Configuration is explicit (kick_api.proxy); HTTP(S)_PROXY must not reroute us.
            trust_env=False,
            follow_redirects=False,
            # A jar itself: httpx copies a Cookies object into a jar with the default policy.
            cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Cancel lookups in flight and close the connection pool. Idempotent."""
        self._closed = True
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._client.aclose()

    @property
    def cache_size(self) -> int:
        return len(self._cache)

    def invalidate(self, slug: str) -> None:
        """Forget a cached lookup, e.g. when a subscription with its chatroom id gets no ack."""
        self._cache.pop(parse_slug(slug), None)

    # --- channel lookup ----------------------------------------------------------------------

    async def channel(self, slug: str) -> KickChannel:
        """``GET /api/v2/channels/{slug}``: the channel's ids and Kick's document.

        Raises ``ClientInputError`` for a malformed slug (before any I/O), ``ChannelNotFound``,
        ``KickBlocked``, ``KickTimeout`` or ``KickBadResponse``.
        """
        slug = parse_slug(slug)
        self._check_open()
        cached = self._cache_get(slug)
        if cached is not None:
            self.stats.cache_hits += 1
            if isinstance(cached, KickChannel):
                return cached
            raise ChannelNotFound(_not_found_message(slug), body=cached.body)
        self.stats.cache_misses += 1
        task = self._inflight.get(slug)
        if task is None:
            task = asyncio.get_running_loop().create_task(
                self._load_channel(slug), name=f"kick-api-channel:{slug}"
            )
            self._inflight[slug] = task
            task.add_done_callback(partial(self._flight_done, slug))
        else:
            self.stats.inflight_joined += 1
        # shield: a cancelled caller must not cancel the request the others are waiting for.
        return await asyncio.shield(task)

    def _flight_done(self, slug: str, task: asyncio.Task[KickChannel]) -> None:
        if self._inflight.get(slug) is task:
            del self._inflight[slug]
        if not task.cancelled():
            task.exception()  # retrieved: every caller may have been cancelled meanwhile

    async def _load_channel(self, slug: str) -> KickChannel:
        reply = await self._request("GET", f"/api/v2/channels/{slug}", self._headers)
        if reply.status == 404:
            body = _json_or_none(reply.body)
            self._cache_put(slug, _NotFound(body), self._not_found_ttl)
            raise ChannelNotFound(_not_found_message(slug), body=body)
        if not 200 <= reply.status < 300:
            raise _status_error(reply, f"channel {slug!r}")
        channel = _parse_channel(slug, reply)
        self._cache_put(slug, channel, self._cache_ttl)
        return channel

    def _cache_get(self, slug: str) -> KickChannel | _NotFound | None:
        entry = self._cache.get(slug)
        if entry is None:
            return None
        if entry[0] <= self._clock():
            del self._cache[slug]
            return None
        return entry[1]

    def _cache_put(self, slug: str, value: KickChannel | _NotFound, ttl: float) -> None:
        if ttl <= 0:
            return
        self._cache.pop(slug, None)
        self._cache[slug] = (self._clock() + ttl, value)
        while len(self._cache) > self._max_cache_entries:
            self._cache.popitem(last=False)

    # --- chat history ------------------------------------------------------------------------

    async def messages(self, channel_id: int) -> list[dict[str, Any]]:
        """``GET /api/v2/channels/{channel_id}/messages``, in the live ``ChatMessageEvent`` shape.

        Kick's history items differ from what Pusher delivers: ``chat_id`` becomes
        ``chatroom_id``, the JSON-string ``metadata`` becomes an object (and is left out when
        null or undecodable); every other field (``sender``, ``user_id``, ``created_at`` in
        Kick's history format) is kept. Newest first, as Kick returns them.
        """
        channel_id = parse_channel_id(channel_id)
        self._check_open()
        path = f"/api/v2/channels/{channel_id}/messages"
        reply = await self._request("GET", path, self._headers)
        if reply.status == 404:
            raise ChannelNotFound(
                f"Kick has no channel with id {channel_id}", body=_json_or_none(reply.body)
            )
        if not 200 <= reply.status < 300:
            raise _status_error(reply, f"history of channel {channel_id}")
        return _parse_history(reply)

    # --- user endpoints ----------------------------------------------------------------------

    async def forward(self, method: str, path: str, headers: Mapping[str, str]) -> ForwardResponse:
        """Send a user request to Kick and return its answer as is (any status).

        Of the caller's ``headers`` only ``X-Kick-Cookie`` (sent to Kick as ``Cookie``) and
        ``Authorization`` are forwarded; the operator's configured ``Cookie``/``Authorization``
        are never added to a user's request. Their values are never logged. No caching; only a
        GET is retried. Raises ``KickTimeout``/``KickBadResponse`` when Kick gives no answer,
        ``ClientInputError("invalid_header")`` for a header value that cannot be sent, and
        ``ValueError`` for a method or path the gateway itself should never produce.
        """
        self._check_open()
        method = method.upper()
        if method not in _FORWARD_METHODS or not _FORWARD_PATH.fullmatch(path):
            raise ValueError(f"refusing to forward {method} {path[:80]!r}")
        outgoing = {
            name: value
            for name, value in self._headers.items()
            if name.lower() not in ("cookie", "authorization")
        }
        for name, value in headers.items():
            target = _CALLER_HEADERS.get(name.lower())
            if target is None:
                continue
            if any(c in value for c in "\r\n\0") or not value.isascii():
                # Kick's cookies and tokens are ASCII; anything else cannot be sent faithfully.
                raise ClientInputError(
                    "invalid_header", f"{name} must be ASCII without CR, LF or NUL"
                )
            outgoing[target] = value
        reply = await self._request(method, path, outgoing, idempotent=method == "GET")
        kept = {k: v for k in ("content-type", "retry-after") if (v := reply.headers.get(k))}
        return ForwardResponse(reply.status, kept, reply.body)

    # --- transport, retries, bookkeeping -----------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("KickApi is closed")

    async def _request(
        self, method: str, path: str, headers: Mapping[str, str], *, idempotent: bool = True
    ) -> _Reply:
        """Send with retries; return the final HTTP answer, or raise when there was none."""
        attempt = 0
        blocked_retried = False
        while True:
            reply: _Reply | None = None
            try:
                reply = await self._send_once(method, path, headers)
            except _Failure as failure:
                self._note(failure.outcome)
                delay = self._retry_delay(None, attempt, blocked_retried) if idempotent else None
                if delay is None:
                    raise failure.to_error() from failure.__cause__
            else:
                self._note(_outcome(reply))
                delay = self._retry_delay(reply, attempt, blocked_retried) if idempotent else None
                if delay is None:
                    return reply
            if reply is not None and reply.status == 403:
                blocked_retried = True
            else:
                attempt += 1
            self.stats.retries += 1
            await asyncio.sleep(delay)

    def _retry_delay(
        self, reply: _Reply | None, attempt: int, blocked_retried: bool
    ) -> float | None:
        if reply is not None and reply.status == 403:
            return None if blocked_retried or self._retries == 0 else self._blocked_retry_delay
        if reply is not None and reply.status < 500 and reply.status != 429:
            return None
        if attempt >= self._retries:
            return None
        backoff = min(self._backoff_max, self._backoff_initial * 2.0**attempt)
        delay = backoff * random.uniform(0.5, 1.0)
        wait = _retry_after(reply.headers) if reply is not None else None
        if wait is not None:
            delay = max(delay, min(wait, self._backoff_max))
        return delay

    async def _send_once(self, method: str, path: str, headers: Mapping[str, str]) -> _Reply:
        started = time.perf_counter()
        try:
            # httpx's timeout is per phase; this bounds the whole attempt (a trickling body too).
            async with asyncio.timeout(self._timeout):
                request = self._client.build_request(method, path, headers=headers)
                response = await self._client.send(request, stream=True)
                try:
                    body = await _read_body(response)
                finally:
                    await response.aclose()
        except (TimeoutError, httpx.TimeoutException) as exc:
            raise _Failure("timeout", f"Kick did not answer within {self._timeout:g} s") from exc
        except httpx.HTTPError as exc:
            raise _Failure("error", f"cannot reach Kick: {type(exc).__name__}: {exc}") from exc
        if log.isEnabledFor(logging.DEBUG):
            elapsed = (time.perf_counter() - started) * 1000
            log.debug("kick %s %s -> %d (%.0f ms)", method, path, response.status_code, elapsed)
        return _Reply(response.status_code, response.headers, body)

    def _note(self, outcome: str) -> None:
        self.stats.requests[outcome] += 1
        state = "ok" if outcome in ("ok", "not_found") else outcome
        previous = self.stats.upstream_state
        if state == previous:
            return
        self.stats.upstream_state = state
        if state == "blocked":
            log.info("kick api: requests are blocked by Kick's edge (403); %s", _BLOCKED_HINT)
        elif state != "ok":
            log.info("kick api: requests are failing (%s)", state)
        elif previous != "unknown":
            log.info("kick api: requests succeed again (after %s)", previous)


_BLOCKED_HINT = (
    "set kick_api.proxy, or kick_api.headers (a browser User-Agent, Kick's cookies) to pass it"
)


def _not_found_message(slug: str) -> str:
    return f"Kick has no channel {slug!r}"


async def _read_body(response: httpx.Response) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _Failure("error", f"Kick's response is larger than {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _json_or_none(body: bytes | str) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


def _is_edge_block(reply: _Reply) -> bool:
    """A 403 from Kick's edge: its JSON ``Request blocked by security policy.`` or a Cloudflare
    challenge (an HTML page, or the ``cf-mitigated`` header)."""
    if "cf-mitigated" in reply.headers:
        return True
    if "html" in reply.headers.get("content-type", ""):
        return True
    return b"blocked by security policy" in reply.body


def _outcome(reply: _Reply) -> str:
    if 200 <= reply.status < 300:
        return "ok"
    if reply.status == 404:
        return "not_found"
    if reply.status == 403 and _is_edge_block(reply):
        return "blocked"
    return "error"


def _status_error(reply: _Reply, what: str) -> KickApiError:
    status = reply.status
    if status == 403 and _is_edge_block(reply):
        return KickBlocked(
            f"Kick's edge blocked the request for {what} (403); {_BLOCKED_HINT}",
            upstream_status=403,
        )
    if status == 429:
        return KickBadResponse(
            f"Kick rate-limited the request for {what} (429)", upstream_status=429
        )
    return KickBadResponse(f"Kick answered {status} for {what}", upstream_status=status)


def _retry_after(headers: httpx.Headers) -> float | None:
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _parse_channel(slug: str, reply: _Reply) -> KickChannel:
    doc = _json_or_none(reply.body)
    # Kick answers with the channel object itself; some clients see it wrapped in {"data": ...}.
    if isinstance(doc, dict) and "id" not in doc and isinstance(doc.get("data"), dict):
        doc = doc["data"]
    if not isinstance(doc, dict):
        raise KickBadResponse(
            f"Kick's answer for channel {slug!r} is not a JSON object", upstream_status=reply.status
        )
    chatroom = doc.get("chatroom")
    try:
        channel_id = parse_channel_id(doc.get("id"))
        chatroom_id = parse_chatroom_id(chatroom.get("id") if isinstance(chatroom, dict) else None)
    except ClientInputError as exc:
        raise KickBadResponse(
            f"Kick's answer for channel {slug!r} lacks a numeric id and chatroom.id",
            upstream_status=reply.status,
        ) from exc
    return KickChannel(slug, channel_id, chatroom_id, reply.body, doc)


def _parse_history(reply: _Reply) -> list[dict[str, Any]]:
    doc = _json_or_none(reply.body)
    data = doc.get("data") if isinstance(doc, dict) else None
    items = data.get("messages") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise KickBadResponse(
            "Kick's chat history is not the expected JSON ({data: {messages: [...]}})",
            upstream_status=reply.status,
        )
    return [_live_shape(item) for item in items if isinstance(item, dict)]


def _live_shape(item: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in item.items():
        if key == "chat_id":
            out["chatroom_id"] = value
        elif key == "metadata":
            metadata = _json_or_none(value) if isinstance(value, str) else value
            if isinstance(metadata, dict):
                out["metadata"] = metadata
        else:
            out[key] = value
    return out
