"""What one client may hold before and after its live connections, without I/O.

Two kinds of session cost memory without being a live connection, and both can be made by the
thousand for nothing, so each is bounded per client (the server's ``client_key``, normally the
client's IP address) as well as in total:

* **Pending sessions**: Engine.IO sessions with no socket in any namespace yet (a handshake
  whose CONNECT has not come, or was refused). At most ``pending_per_client`` per client and
  ``max_pending`` in all; past that a handshake is refused with an HTTP error before any
  session exists. A pending session also ends after the server's ``connect_timeout``.
* **Detached sockets**: sockets whose transport dropped and that wait ``recovery_window`` to be
  recovered. They do not count as live connections (a page reload must not lock a user out),
  but at most ``detached_per_client`` are kept per client: past that the oldest one ends.

Live connections (sockets in a namespace) are the application's to limit, in its connect
handler (see :class:`kichat.relay.service.RelayService`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from kichat.http import Request
    from kichat.sio.namespace import Socket

TOO_MANY_PENDING: Final = "too_many_pending_connections"
SERVER_BUSY: Final = "server_busy"


@dataclass(frozen=True, slots=True)
class Refusal:
    """A refused handshake: HTTP ``status`` with the JSON body
    ``{"code": 4, "message": message, "data": data}`` (Engine.IO's error shape, plus the same
    ``data`` a ``connect_error`` carries)."""

    status: int
    message: str
    data: dict[str, Any] | None = None


ClientKey = Callable[["Request"], str]


def peer_address(request: Request) -> str:
    return request.peer


class Budgets:
    """Pending sessions and detached sockets per client key."""

    def __init__(
        self, *, pending_per_client: int, max_pending: int, detached_per_client: int
    ) -> None:
        if min(pending_per_client, max_pending, detached_per_client) < 1:
            raise ValueError("every budget must be at least 1")
        self.pending_per_client = pending_per_client
        self.max_pending = max_pending
        self.detached_per_client = detached_per_client
        self.pending: dict[str, int] = {}
        self.total_pending = 0
        # Per client, its detached sockets in the order they detached (oldest first).
        self.detached: dict[str, dict[Socket, None]] = {}

    # -- pending sessions ----------------------------------------------------------------------

    def check_pending(self, key: str) -> Refusal | None:
        """Whether one more pending session for ``key`` fits (``add_pending`` takes it)."""
        if self.pending.get(key, 0) >= self.pending_per_client:
            limit = self.pending_per_client
            return Refusal(
                429,
                f"too many connections in progress from your address (limit {limit})",
                {"code": TOO_MANY_PENDING, "limit": limit},
            )
        if self.total_pending >= self.max_pending:
            return Refusal(503, "the server is busy; try again", {"code": SERVER_BUSY})
        return None

    def add_pending(self, key: str) -> None:
        self.pending[key] = self.pending.get(key, 0) + 1
        self.total_pending += 1

    def remove_pending(self, key: str) -> None:
        count = self.pending.get(key, 0) - 1
        if count > 0:
            self.pending[key] = count
        else:
            self.pending.pop(key, None)
        self.total_pending -= 1

    # -- detached sockets ----------------------------------------------------------------------

    def add_detached(self, key: str, sock: Socket) -> list[Socket]:
        """Keep ``sock``; return the sockets of ``key`` past its budget, oldest first, which
        the caller ends."""
        kept = self.detached.get(key)
        if kept is None:
            kept = self.detached[key] = {}
        kept[sock] = None
        evicted: list[Socket] = []
        while len(kept) > self.detached_per_client:
            oldest = next(iter(kept))
            del kept[oldest]
            evicted.append(oldest)
        return evicted

    def remove_detached(self, key: str, sock: Socket) -> None:
        kept = self.detached.get(key)
        if kept is None:
            return
        kept.pop(sock, None)
        if not kept:
            del self.detached[key]

    def detached_count(self, key: str) -> int:
        return len(self.detached.get(key, ()))
