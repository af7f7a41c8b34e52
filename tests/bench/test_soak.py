"""The soak's own checks, pure: what bench/soakclient.py sends is valid WebSocket (read back by
the gateway's own frame parser), and its loss accounting counts what it says it counts. The
soak itself (bench/soak.py) runs for 15 minutes and is not part of the suite."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from hypothesis import given
from hypothesis import strategies as st

from kichat.http.websocket import Close, FrameParser, Message

SOAKCLIENT = Path(__file__).resolve().parents[2] / "bench" / "soakclient.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_soakclient", SOAKCLIENT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


soak = _load()


@given(st.binary(max_size=70_000))
def test_client_frames_are_masked_frames_the_gateway_reads_back(payload: bytes) -> None:
    parser = FrameParser(max_message_size=1 << 20)
    assert parser.feed(soak.mask_frame(2, payload)) == [Message(payload)]
    assert parser.feed(soak.mask_frame(8, (1000).to_bytes(2, "big"))) == [Close(1000, "")]


def test_loss_is_what_others_got_between_a_periods_first_and_last() -> None:
    def period(room: int, seqs: list[int], healthy: bool = True) -> object:
        p = soak.Period(room, healthy=healthy)
        for s in seqs:
            p.add(s)
        return p

    periods = [
        period(0, [1, 2, 3, 4, 5, 6]),
        period(0, [3, 4, 6, 7]),  # lost 5 (another client got it), not 1-2 (before its first)
        period(0, [2, 3, 3, 4]),  # a duplicate
        period(1, [10, 12]),  # 11: nobody got it, so not this client's loss
        period(0, [1, 6], healthy=False),  # a slow reader: not counted, even with gaps
        period(1, []),  # subscribed, got nothing: nothing to say
    ]
    acc = soak.losses(periods)
    assert acc["lost"] == 1
    assert acc["periods_with_loss"] == 1
    assert acc["dups"] == 1
    assert acc["periods"] == 4
    assert acc["messages"] == 6 + 4 + 3 + 2
    assert acc["union"] == {0: 7, 1: 2}
