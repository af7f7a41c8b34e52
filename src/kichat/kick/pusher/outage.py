"""When to tell the operator that Kick's Pusher cannot be reached, and how to say why. Pure: the
time is passed in.

Every failed connection attempt is worth a DEBUG line; at WARNING only what an operator needs:
the first failure of an outage, a change of cause, and a reminder every ``repeat_every``
seconds while it lasts. The end of an outage is one INFO line (the caller logs it from what
:meth:`OutageLog.connected` returns). A retry loop that runs for hours thus writes a handful of
lines, never one per attempt.

One :class:`OutageLog` serves a whole pool: the outage is "some connection cannot connect", so
forty connections refused for the same reason make one warning, not forty; it ends when no
connection is failing any more.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from typing import Literal

from websockets.exceptions import InvalidStatus, ProxyError, WebSocketException

__all__ = ["OutageLog", "Recovery", "Report", "describe_connect_error", "describe_failure"]


@dataclass(frozen=True, slots=True)
class Report:
    """A failure worth a WARNING: why (``kind``), for how long and how many attempts so far."""

    kind: Literal["first", "changed", "repeat"]
    down_for: float
    failures: int


@dataclass(frozen=True, slots=True)
class Recovery:
    """The outage ended: how long it lasted and how many attempts failed."""

    down_for: float
    failures: int


def describe_connect_error(
    exc: OSError | TimeoutError | WebSocketException, where: str, open_timeout: float
) -> str:
    """Why no WebSocket could be opened to ``where`` (host:port), for an operator. The text is
    stable across retries of the same problem: :class:`OutageLog` compares causes by it."""
    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        return f"{where} answered the WebSocket handshake with HTTP {status}"
    if isinstance(exc, TimeoutError):
        return f"no WebSocket handshake with {where} within {open_timeout:g} s"
    if isinstance(exc, ConnectionRefusedError):
        return f"connection refused by {where}"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve {where.rpartition(':')[0]}: {exc.strerror or exc}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake with {where} failed: {exc.reason or exc}"
    if isinstance(exc, OSError):
        return f"cannot connect to {where}: {exc.strerror or exc}"
    if isinstance(exc, ProxyError):
        return f"the proxy failed: {exc}"
    return f"invalid WebSocket handshake from {where}: {exc}"


def describe_failure(code: int | None, reason: str, key: str) -> str:
    """The cause of an attempt that never reached ``connection_established``; ``key`` is the
    connection's counter key (``connect_error``, ``stale``, or the close code)."""
    if key in ("connect_error", "stale", "internal_error"):
        return reason  # already a description (a stale handshake: "no ... within N s")
    detail = f": {reason}" if reason else ""
    return f"closed with code {code} before Pusher's handshake completed{detail}"


class OutageLog:
    __slots__ = ("_cause", "_failing", "_failures", "_since", "_warned_at", "repeat_every")

    def __init__(self, repeat_every: float = 60.0) -> None:
        self.repeat_every = repeat_every
        self._failing: set[int] = set()  # ids of connections whose last attempt failed
        self._since: float | None = None
        self._cause: str | None = None
        self._warned_at = 0.0
        self._failures = 0

    @property
    def down(self) -> bool:
        return self._since is not None

    @property
    def cause(self) -> str | None:
        """The cause of the latest failure of the current outage, if there is one."""
        return self._cause

    def failed(self, conn_id: int, cause: str, now: float) -> Report | None:
        """Connection ``conn_id`` could not connect because of ``cause`` (a stable description:
        a new text counts as a new cause). Returns a :class:`Report` if this deserves a
        WARNING, ``None`` if DEBUG is enough."""
        self._failing.add(conn_id)
        self._failures += 1
        previous, self._cause = self._cause, cause
        if self._since is None:
            self._since = now
            kind: Literal["first", "changed", "repeat"] = "first"
        elif cause != previous:
            kind = "changed"
        elif now - self._warned_at >= self.repeat_every:
            kind = "repeat"
        else:
            return None
        self._warned_at = now
        return Report(kind, now - self._since, self._failures)

    def connected(self, conn_id: int, now: float) -> Recovery | None:
        """Connection ``conn_id`` is up. Returns a :class:`Recovery` if that ended the outage."""
        self._failing.discard(conn_id)
        if self._since is None or self._failing:
            return None
        recovery = Recovery(now - self._since, self._failures)
        self._reset()
        return recovery

    def forget(self, conn_id: int) -> None:
        """Connection ``conn_id`` is closed for good: it no longer keeps an outage going."""
        self._failing.discard(conn_id)
        if not self._failing:
            self._reset()

    def _reset(self) -> None:
        self._since = None
        self._cause = None
        self._failures = 0
