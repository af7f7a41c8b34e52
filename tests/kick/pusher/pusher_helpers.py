"""Helpers for the upstream Pusher client tests: the Kick simulator fixture, waiting helpers.

Not a conftest.py: the test tree has no packages, so a second conftest module would clash with
tests/conftest.py. Test modules import what they need from here.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from kichat.kick.pusher import Backoff

from conftest import UNIT

CHAT = "App\\Events\\ChatMessageEvent"


@dataclass
class Recorder:
    """An ``on_event`` callback that remembers every call and lets tests await the next one."""

    events: list[tuple[str, str, object]] = field(default_factory=list)
    _queue: asyncio.Queue[tuple[str, str, object]] = field(default_factory=asyncio.Queue)

    def __call__(self, channel: str, event: str, data: object) -> None:
        self.events.append((channel, event, data))
        self._queue.put_nowait((channel, event, data))

    async def next(self, within: float = 5 * UNIT) -> tuple[str, str, object]:
        try:
            return await asyncio.wait_for(self._queue.get(), within)
        except TimeoutError:
            raise AssertionError(f"no event within {within:g} s") from None


def fast_backoff(initial: float = 0.05, maximum: float = 0.4, jitter: float = 0.25) -> Backoff:
    return Backoff(
        initial=initial * UNIT, maximum=maximum * UNIT, jitter=jitter, rng=random.Random(7)
    )


@asynccontextmanager
async def open_sim(**kwargs: Any) -> AsyncIterator[Any]:
    """The Kick simulator on an ephemeral loopback port."""
    from kichat.sim import KickSimulator

    kwargs.setdefault("activity_timeout", 120.0)
    kwargs.setdefault("pong_timeout", 30.0)
    async with KickSimulator(port=0, **kwargs) as server:
        yield server


def pusher_tasks() -> set[asyncio.Task[Any]]:
    """Tasks started by the Pusher client (all of them are named ``kichat-pusher...``)."""
    return {t for t in asyncio.all_tasks() if t.get_name().startswith("kichat-pusher")}
