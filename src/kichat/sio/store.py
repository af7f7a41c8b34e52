"""The hook for applications that keep Socket.IO sessions outside this process.

By default a disconnected socket waits in memory (``Server.detached``) and its missed packets
come from the namespace's own recovery log: recovery works against this process only. An
application that runs several processes (kichat's cluster mode) passes a :class:`SessionStore`
to :class:`~kichat.sio.Server` and broadcasts with :meth:`Namespace.deliver` (the packets carry
offsets it chose); the server then hands every recovery attempt to the store, which uses
:meth:`Namespace.revive`, :meth:`Namespace.attach` and :meth:`Namespace.abandon`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from kichat.sio.connection import Connection
    from kichat.sio.namespace import Namespace, Socket


class SessionStore(Protocol):
    def on_detached(self, sock: Socket) -> None:
        """``sock`` lost its transport and may come back (here or on another process)."""

    async def restore(
        self, nsp: Namespace, conn: Connection, pid: str, offset: object
    ) -> Socket | None:
        """Restore session ``pid`` on ``conn`` with the packets it missed after ``offset``; the
        restored socket (attached), or ``None`` (the client then gets a new session). Packets the
        client sent after its CONNECT wait until this returns."""
        ...
