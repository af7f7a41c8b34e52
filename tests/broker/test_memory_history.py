"""The memory broker's history (the single-process recovery log) against a model of what it
must keep: a list of publications, trimmed from the oldest by age and by bytes for all topics
together, a topic's history dropped whole, reads refused once they would need an evicted
publication. The broker stores each topic compactly (one buffer, typed arrays, its front cut
off now and then), so random sequences long enough to cut it many times are compared."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from kichat.broker import MemoryBroker
from kichat.broker.base import Lease

TOPICS = ("a", "b", "c")


@dataclass
class Model:
    window: float
    max_bytes: int
    now: float = 0.0
    position: int = 0
    entries: list[tuple[str, int, float, bytes]] = field(default_factory=list)
    evicted_through: dict[str, int] = field(default_factory=dict)

    def publish(self, topic: str, payload: bytes) -> None:
        self.position += 1
        self.entries.append((topic, self.position, self.now, payload))
        self.trim()

    def trim(self) -> None:
        while self.entries and (
            self.entries[0][2] < self.now - self.window
            or sum(len(e[3]) for e in self.entries) > self.max_bytes
        ):
            topic, position, _, _ = self.entries.pop(0)
            self.evicted_through[topic] = position

    def drop(self, topic: str) -> None:
        self.entries = [e for e in self.entries if e[0] != topic]
        self.evicted_through.pop(topic, None)

    def read(self, since: dict[str, int]) -> list[tuple[str, int, bytes]] | None:
        if any(after > self.position or self.evicted_through.get(t, 0) > after
               for t, after in since.items()):  # fmt: skip
            return None
        return [(t, p, b) for t, p, _, b in self.entries if t in since and p > since[t]]


operation = st.one_of(
    st.tuples(st.just("publish"), st.sampled_from(TOPICS), st.integers(0, 700)),
    st.tuples(st.just("wait"), st.floats(0, 3)),
    st.tuples(st.just("drop"), st.sampled_from(TOPICS)),
    st.tuples(st.just("read"), st.dictionaries(st.sampled_from(TOPICS), st.integers(0, 400))),
)


@settings(max_examples=150, deadline=None)
@given(
    window=st.floats(1, 20),
    max_bytes=st.integers(500, 20_000),
    ops=st.lists(operation, max_size=400),
)
def test_history_matches_a_model_of_what_it_must_keep(
    window: float,
    max_bytes: int,
    ops: list[tuple],  # type: ignore[type-arg]
) -> None:
    model = Model(window, max_bytes)
    broker = MemoryBroker(window=window, max_bytes=max_bytes, clock=lambda: model.now)
    leases: dict[str, Lease] = {}
    for op in ops:
        if op[0] == "publish":
            topic, size = op[1], op[2]
            if topic not in leases:
                (leases[topic],) = asyncio.run(broker.acquire([topic]))
            payload = bytes([model.position % 251]) * size
            broker.publish(leases[topic], payload)
            model.publish(topic, payload)
        elif op[0] == "wait":
            model.now += op[1]
            broker.expire()
            model.trim()
        elif op[0] == "drop":
            broker.drop_history(op[1])
            model.drop(op[1])
        else:
            history = broker.read_history(op[1])
            expected = model.read(op[1])
            if expected is None:
                assert history is None
            else:
                assert history is not None
                assert [(p.topic, p.position, p.payload) for p in history.publications] == expected
                assert history.upto == model.position
        assert broker.bytes == sum(len(e[3]) for e in model.entries)


def test_a_long_stream_is_kept_compactly_and_read_back_exactly() -> None:
    """100,000 publications through a window of 1,000: the front is cut off again and again, and
    what is kept is always the last 1,000, byte for byte."""
    broker = MemoryBroker(window=1e9, max_bytes=1000 * 39)
    (lease,) = asyncio.run(broker.acquire(["t"]))
    for n in range(1, 100_001):
        broker.publish(lease, b"%039d" % n)
        if n % 9973 == 0:
            history = broker.read_history({"t": n - 1000})
            assert history is not None
            assert [p.payload for p in history.publications] == [
                b"%039d" % i for i in range(n - 999, n + 1)
            ]
            assert broker.read_history({"t": n - 1001}) is None  # needs an evicted one
    assert broker.bytes == 1000 * 39
