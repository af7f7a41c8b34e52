"""Generated events, scripted runs, random traffic and bench traffic, on top of the simulator's
one publish function (:meth:`kichat.sim.server.KickSimulator._publish_encoded`).

Everything here calls ``publish(channel, event, data_json)`` with data encoded once; the server
owns connections and fan-out. Kept apart from the server because pacing and payload choice are
a different concern from speaking Pusher.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from kichat.errors import ClientInputError
from kichat.sim import pusher
from kichat.sim.channels import ChannelDirectory, SimChannel
from kichat.sim.rest import ChatHistory
from kichat.sim.traffic import (
    CHAT_MESSAGE,
    SCRIPT_ORDER,
    BenchMessages,
    EventFactory,
    Generated,
    Mix,
    Route,
    make_chat,
    paced,
    resolve_event,
)

log = logging.getLogger("kichat.sim")

MAX_RATE: Final = 100_000.0
MAX_DURATION: Final = 3_600.0

_STREAM_STARTED: Final = "App\\Events\\StreamerIsLive"
_STREAM_STOPPED: Final = "App\\Events\\StopStreamBroadcast"
_MESSAGE_DELETED: Final = "App\\Events\\MessageDeletedEvent"

Publish = Callable[[str, str, bytes], int]


@dataclass(frozen=True, slots=True)
class Published:
    """One event the simulator generated and published."""

    event: str
    channel: str
    data: Any
    recipients: int


@dataclass
class BenchStatus:
    """Progress of the current (or last) bench run; ``started_at_ns`` is 0 before the first."""

    running: bool = False
    published: dict[int, int] = field(default_factory=dict)
    started_at_ns: int = 0
    finished_at_ns: int | None = None


class Scenarios:
    """What the simulator publishes on its own: one event, a script, random or bench traffic."""

    def __init__(
        self,
        channels: ChannelDirectory,
        history: ChatHistory,
        factory: EventFactory,
        publish: Publish,
        duplicate: Callable[[], bool],
    ) -> None:
        self.channels = channels
        self.history = history
        self.factory = factory
        self._publish = publish
        # Whether this chatroom event also goes to the legacy alias (the sim's option, per event).
        self._duplicate = duplicate
        self.bench = BenchStatus()
        self._traffic: asyncio.Task[None] | None = None
        self._bench_task: asyncio.Task[dict[int, int]] | None = None

    # -- generated events ------------------------------------------------------------------------

    def emit(self, ch: SimChannel, gen: Generated) -> Published:
        # Stream lifecycle events also change what the REST channel endpoint says, as on Kick.
        if gen.event == _STREAM_STARTED:
            stream = self.factory.livestream(ch)
            stream["id"] = gen.data["livestream"]["id"]
            stream["session_title"] = gen.data["livestream"]["session_title"]
            ch.livestream = stream
        elif gen.event == _STREAM_STOPPED:
            ch.livestream = None
        channel = gen.route.channel_name(ch)
        data_json = pusher.encode_data(gen.data)
        sent = self._publish(channel, gen.event, data_json)
        if gen.route is Route.CHATROOM and self._duplicate():
            sent += self._publish(ch.legacy_chatroom_channel, gen.event, data_json)
        return Published(gen.event, channel, gen.data, sent)

    def generate(self, event: str, ch: SimChannel, chat_kind: str = "message") -> Generated:
        if event == CHAT_MESSAGE:
            recent = self.history.latest(ch.chatroom_id) if chat_kind == "reply" else None
            return Generated(event, Route.CHATROOM, make_chat(self.factory, ch, chat_kind, recent))
        recent = self.history.latest(ch.chatroom_id) if event == _MESSAGE_DELETED else None
        return self.factory.make(event, ch, recent_message=recent)

    async def publish_generated(self, event_name: str, slug: str) -> Published:
        ch = self.channels.get(slug)
        return self.emit(ch, self.generate(resolve_event(event_name), ch))

    async def run_script(
        self, slug: str, events: Sequence[str] | None = None, interval: float = 0.0
    ) -> list[Published]:
        """Every event type once in a fixed order (or just ``events``), ``interval`` s apart."""
        ch = self.channels.get(slug)
        names = [resolve_event(e) for e in events] if events is not None else list(SCRIPT_ORDER)
        out = []
        for name in names:
            out.append(self.emit(ch, self.generate(name, ch)))
            await asyncio.sleep(interval)
        return out

    # -- random traffic --------------------------------------------------------------------------

    def start_traffic(
        self, rate: float, slugs: Sequence[str] | None = None, mix: str = "realistic"
    ) -> None:
        """Random events at ``rate``/s on each channel (default: every known channel) until
        :meth:`stop_traffic`. ``mix``: "realistic" (wire.md §3.29, ~97 % chat), "chat" or
        "uniform"."""
        _check_rate(rate)
        channels = (
            [self.channels.get(s) for s in slugs] if slugs is not None else list(self.channels)
        )
        if not channels:
            raise ClientInputError("bad_slugs", "slugs must name at least one channel")
        picker = Mix(mix, self.factory.rng)
        if self._traffic is not None:
            self._traffic.cancel()
        self._traffic = asyncio.get_running_loop().create_task(
            self._run_traffic(channels, rate, picker)
        )
        log.info("random traffic started: %s/s on %d channel(s), mix %s", rate, len(channels), mix)

    async def stop_traffic(self) -> None:
        task, self._traffic = self._traffic, None
        if task is not None:
            await _cancel(task)
            log.info("random traffic stopped")

    @property
    def traffic_running(self) -> bool:
        return self._traffic is not None and not self._traffic.done()

    async def _run_traffic(self, channels: list[SimChannel], rate: float, picker: Mix) -> None:
        def emit(key: int) -> None:
            ch = channels[key]
            name = picker.pick()
            kind = self.factory.chat_kind() if name == CHAT_MESSAGE else "message"
            self.emit(ch, self.generate(name, ch, kind))

        try:
            await paced(len(channels), rate, None, emit)
        except Exception:
            log.exception("random traffic failed")

    async def run_bench(
        self, chatroom_ids: Sequence[int], rate: float, duration: float
    ) -> dict[int, int]:
        """ChatMessageEvents on ``chatrooms.{id}.v2`` for each id at ``rate``/s for ``duration`` s,
        content ``"<seq> <time.time_ns()>"``. Returns how many were published per chatroom."""
        ids = self._claim_bench(chatroom_ids, rate, duration)
        return await self._run_bench(ids, rate, duration)

    def start_bench(self, chatroom_ids: Sequence[int], rate: float, duration: float) -> None:
        """:meth:`run_bench` in the background; :attr:`bench` shows its progress."""
        ids = self._claim_bench(chatroom_ids, rate, duration)
        self._bench_task = asyncio.get_running_loop().create_task(
            self._run_bench_logged(ids, rate, duration)
        )

    async def stop_bench(self) -> bool:
        running = self.bench.running
        await _cancel(self._bench_task)
        return running

    def _claim_bench(self, chatroom_ids: Sequence[int], rate: float, duration: float) -> list[int]:
        ids = _check_bench(chatroom_ids, rate, duration)
        if self.bench.running:
            raise ClientInputError("bench_running", "a bench run is already in progress")
        self.bench = BenchStatus(True, dict.fromkeys(ids, 0), time.time_ns())
        return ids

    async def _run_bench_logged(
        self, ids: list[int], rate: float, duration: float
    ) -> dict[int, int]:
        # Nobody awaits a background run: its failure must at least reach the log.
        try:
            return await self._run_bench(ids, rate, duration)
        except Exception:
            log.exception("bench traffic failed")
            return dict(self.bench.published)

    async def _run_bench(self, ids: list[int], rate: float, duration: float) -> dict[int, int]:
        status = self.bench
        rooms = [BenchMessages(i) for i in ids]
        log.info("bench started: %d chatroom(s) x %s msg/s x %s s", len(ids), rate, duration)

        def emit(key: int) -> None:
            room = rooms[key]
            data_json = pusher.encode_data(room.next())
            self._publish(room.channel, CHAT_MESSAGE, data_json)
            if self._duplicate():
                self._publish(room.legacy_channel, CHAT_MESSAGE, data_json)
            status.published[room.chatroom_id] += 1

        try:
            await paced(len(rooms), rate, max(1, round(rate * duration)), emit)
        finally:
            status.running = False
            status.finished_at_ns = time.time_ns()
            log.info("bench finished: %d published", sum(status.published.values()))
        return dict(status.published)

    async def close(self) -> None:
        await self.stop_traffic()
        await self.stop_bench()


async def _cancel(task: asyncio.Task[Any] | None) -> None:
    if task is None or task.done():
        return
    task.cancel()
    # wait() neither raises the task's CancelledError nor swallows a cancellation of our own.
    await asyncio.wait([task])


def _check_rate(rate: float) -> None:
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 < rate <= MAX_RATE:
        raise ClientInputError("bad_rate", f"rate must be a number in (0, {MAX_RATE:g}]")


def _check_bench(chatroom_ids: Sequence[int], rate: float, duration: float) -> list[int]:
    _check_rate(rate)
    if (
        isinstance(duration, bool)
        or not isinstance(duration, int | float)
        or not 0 < duration <= MAX_DURATION
    ):
        raise ClientInputError(
            "bad_duration", f"duration must be a number in (0, {MAX_DURATION:g}]"
        )
    ids = list(chatroom_ids)
    if not ids or any(isinstance(i, bool) or not isinstance(i, int) or i <= 0 for i in ids):
        raise ClientInputError(
            "bad_chatroom_ids", "chatroom_ids must be a non-empty list of positive ints"
        )
    if len(set(ids)) != len(ids):
        raise ClientInputError("bad_chatroom_ids", "chatroom_ids must not repeat")
    return ids
