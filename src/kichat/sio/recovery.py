"""Connection state recovery: the log of broadcast packets a reconnecting client may have missed.

How it differs from the reference server's in-memory adapter, on purpose:

* Packets are kept **per room**, so a restore looks only at the rooms the socket was in
  instead of scanning every packet the server sent.
* A socket's rooms remember the offset at which it joined, so a restore never replays a
  packet sent to a room before the socket joined it.
* A client that never received a broadcast (no offset yet) can still recover: its socket's
  own starting offset stands in for the missing one.
* Memory is bounded by time (``window``) and by bytes (``max_bytes``). Each room remembers the
  highest offset it ever evicted, so a restore that would need an evicted packet fails (the
  client reconnects as a fresh session) instead of silently skipping it.
* A room's log lives as long as the room has members, detached ones included; the server calls
  :meth:`RecoveryLog.drop_room` when the last one is gone.

Offsets are increasing integers, sent to clients as decimal strings.
"""

from __future__ import annotations

import heapq
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass


class _RoomLog:
    __slots__ = ("alive", "entries", "evicted_through")

    def __init__(self) -> None:
        self.entries: deque[_Entry] = deque()
        self.evicted_through = 0  # highest offset evicted from this room, for whatever reason
        self.alive = True


@dataclass(slots=True)
class _Entry:
    offset: int
    log: _RoomLog
    frame: bytes  # emptied when its room is dropped, so the memory goes before the entry does
    at: float


class RecoveryLog:
    def __init__(
        self, window: float, max_bytes: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.window = window
        self.max_bytes = max_bytes
        self.clock = clock
        self.last_offset = 0
        self.bytes = 0
        self._all: deque[_Entry] = deque()
        self._rooms: dict[str, _RoomLog] = {}

    def __len__(self) -> int:
        return len(self._all)

    def next_offset(self) -> int:
        self.last_offset += 1
        return self.last_offset

    def append(self, room: str, offset: int, frame: bytes) -> None:
        log = self._rooms.get(room)
        if log is None:
            log = self._rooms[room] = _RoomLog()
        now = self.clock()
        entry = _Entry(offset, log, frame, now)
        self._all.append(entry)
        log.entries.append(entry)
        self.bytes += len(frame)
        if self.bytes > self.max_bytes or self._all[0].at < now - self.window:
            self._trim(now)

    def _trim(self, now: float) -> None:
        horizon = now - self.window
        entries = self._all
        while entries and (entries[0].at < horizon or self.bytes > self.max_bytes):
            entry = entries.popleft()
            log = entry.log
            if not log.alive:
                continue  # its room was dropped; its bytes were accounted for then
            self.bytes -= len(entry.frame)
            log.entries.popleft()
            log.evicted_through = entry.offset

    def expire(self) -> None:
        """Drop what is older than the window (called periodically, even without traffic)."""
        self._trim(self.clock())

    def drop_room(self, room: str) -> None:
        """Forget a room nobody is in any more (no socket can ask to restore it)."""
        log = self._rooms.pop(room, None)
        if log is None:
            return
        # The entries stay in the global queue until they age out; they are skipped then.
        log.alive = False
        for entry in log.entries:
            self.bytes -= len(entry.frame)
            entry.frame = b""
        log.entries.clear()

    def missed(self, rooms: dict[str, int], after: int) -> list[bytes] | None:
        """Frames of ``rooms`` with an offset above ``after`` (and above each room's join
        offset), in offset order; ``None`` if some of them are no longer kept."""
        if after > self.last_offset:
            return None
        streams: list[list[_Entry]] = []
        for room, joined_at in rooms.items():
            start = max(after, joined_at)
            log = self._rooms.get(room)
            if log is None:
                continue
            if log.evicted_through > start:
                return None
            picked = _tail_after(log.entries, start)
            if picked:
                streams.append(picked)
        if not streams:
            return []
        if len(streams) == 1:
            return [e.frame for e in streams[0]]
        return [e.frame for e in heapq.merge(*streams, key=lambda e: e.offset)]


def _tail_after(entries: deque[_Entry], offset: int) -> list[_Entry]:
    """Entries with an offset above ``offset``; they are at the end, so walk from the right."""
    tail: list[_Entry] = []
    for entry in reversed(entries):
        if entry.offset <= offset:
            break
        tail.append(entry)
    tail.reverse()
    return tail
