"""Giving memory the process freed back to the operating system.

Why this exists: after a burst (clients that stopped reading and were cut off, large messages
assembled and dropped, an attack), CPython frees the objects, but glibc's allocator keeps the
pages. Medium-sized blocks (frames, queued writes, buffers of a few KiB) are spread over the
heap, live objects pin its top, and glibc only gives back memory above the highest block in
use, so RSS stayed at 0.3-1.6 GiB with no client connected. ``malloc_trim(0)`` also returns
the free pages in the middle of the heap (``MADV_DONTNEED``), which brought such a process
from 270 MiB back to 64 MiB.

:class:`MemoryTrimmer` looks every ``interval`` seconds at how many bytes glibc holds free
(``mallinfo2``, under a millisecond) and at RSS, and trims only after memory was used and
released, not on every tick of steady traffic. A trim blocks the event loop for roughly
0.25 ms per MiB returned (about 70 ms for 270 MiB), and a few ms when there is little to
return.

Elsewhere than glibc (musl, macOS) there is nothing to call and the trimmer does nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import os
from typing import Final

log = logging.getLogger("kichat.memory")

MIB: Final = 1024 * 1024
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


_MALLINFO2_FIELDS: Final = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                            "fsmblks", "uordblks", "fordblks", "keepcost")  # fmt: skip


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in _MALLINFO2_FIELDS]


def _glibc() -> ctypes.CDLL | None:
    """glibc, if this process runs on it (and it is recent enough to have mallinfo2)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.mallinfo2.restype = _MallInfo2
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.malloc_trim.restype = ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


def rss_bytes() -> int:
    """The process's resident set size (Linux; 0 where /proc is missing)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
        return 0


class MemoryTrimmer:
    """Calls ``malloc_trim(0)``, checking every ``interval`` seconds (0: never), when glibc
    holds at least ``threshold`` free bytes and RSS grew by ``threshold`` since its lowest
    point after the last trim: memory was used and given up again. Steady traffic, or a
    process that grows because it serves more clients (little free memory), costs one
    ``mallinfo2`` call per check."""

    def __init__(self, interval: float, threshold: int = 8 * MIB) -> None:
        self.interval = interval
        self.threshold = threshold
        self.trims = 0
        self.returned = 0  # bytes of RSS the trims gave back, in all
        self._libc = _glibc()
        # The low point starts at the RSS of now, not at the first check: a burst that comes
        # and goes before that check (10 s by default) would otherwise become the low point,
        # and its memory would never be returned.
        self._rss_low = rss_bytes()
        self._timer: asyncio.TimerHandle | None = None

    @property
    def available(self) -> bool:
        return self._libc is not None

    def start(self) -> None:
        if self.interval > 0 and self._libc is not None and self._timer is None:
            self._schedule()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _schedule(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(self.interval, self._tick)

    def _tick(self) -> None:
        self.check()
        self._schedule()

    def check(self) -> int:
        """Trim now if it is worth it (see the class docstring); the bytes of RSS returned."""
        libc = self._libc
        if libc is None:
            return 0
        rss = rss_bytes()
        self._rss_low = min(self._rss_low, rss)
        # Pages already trimmed still count as free in mallinfo, hence the RSS condition: it
        # tells whether free memory was touched again since.
        free = int(libc.mallinfo2().fordblks)
        if free < self.threshold or rss - self._rss_low < self.threshold:
            return 0
        libc.malloc_trim(0)
        after = rss_bytes()
        returned = max(0, rss - after)
        self._rss_low = after
        self.trims += 1
        self.returned += returned
        log.log(
            logging.INFO if returned >= 64 * MIB else logging.DEBUG,
            "returned %.1f MiB of freed memory to the OS (RSS now %.1f MiB)",
            returned / MIB, after / MIB,
        )  # fmt: skip
        return returned
