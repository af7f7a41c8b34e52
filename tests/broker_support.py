"""A :class:`kichat.broker.Handler` that records every callback, for broker tests."""

from __future__ import annotations

from kichat.broker import Lease


class Recorder:
    def __init__(self) -> None:
        self.publications: list[tuple[str, int, bytes]] = []
        self.gaps: list[frozenset[str]] = []
        self.resets: list[str] = []
        self.renewed: list[Lease] = []
        self.lost: list[str] = []
        self.released: list[str] = []
        self.taken: list[str] = []
        self.offered: list[str] = []

    def on_publication(self, topic: str, position: int, payload: bytes) -> None:
        self.publications.append((topic, position, payload))

    def on_gap(self, topics: frozenset[str]) -> None:
        self.gaps.append(topics)

    def on_reset(self, epoch: str) -> None:
        self.resets.append(epoch)

    def on_lease_renewed(self, lease: Lease) -> None:
        self.renewed.append(lease)

    def on_lease_lost(self, topic: str) -> None:
        self.lost.append(topic)

    def on_topic_released(self, topic: str) -> None:
        self.released.append(topic)

    def on_session_taken(self, pid: str) -> None:
        self.taken.append(pid)

    def on_hand_over(self, topic: str) -> None:
        self.offered.append(topic)
