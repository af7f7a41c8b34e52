"""The bounded queue between the socket reader and the consumer."""

from __future__ import annotations

import asyncio
from collections import deque

from kichat.client.events import Event

__all__ = ["Inbox"]


class Inbox:
    """At most ``limit`` events (the client's own few events may exceed it by one each).

    :meth:`put` waits while the queue is full: the reader stops reading the socket, which is
    the back-pressure the client relies on. :meth:`finish` ends the iteration, with an error
    or cleanly, after the events already queued (or discarding them).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.items: deque[Event] = deque()
        self.end: BaseException | None = None
        self.ended = False
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()

    def full(self) -> bool:
        return len(self.items) >= self.limit

    def put_nowait(self, event: Event) -> None:
        """Append even when full: for the client's own rare events (one per connection)."""
        self.items.append(event)
        self._readable.set()

    async def put(self, event: Event) -> None:
        while self.full() and not self.ended:
            self._writable.clear()
            await self._writable.wait()
        self.put_nowait(event)

    async def get(self) -> Event:
        while not self.items:
            if self.ended:
                if self.end is not None:
                    raise self.end
                raise StopAsyncIteration
            self._readable.clear()
            await self._readable.wait()
        event = self.items.popleft()
        if len(self.items) < self.limit:
            self._writable.set()
        return event

    def finish(self, error: BaseException | None = None, *, discard: bool = False) -> None:
        if not self.ended:
            self.ended = True
            self.end = error
        if discard:
            self.items.clear()
        self._readable.set()
        self._writable.set()
