"""Backoff and reconnect policy: pure, seeded randomness, time passed in by hand."""

from __future__ import annotations

import dataclasses
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kichat.errors import ConfigError
from kichat.kick.pusher.backoff import Backoff, ReconnectPolicy
from kichat.kick.pusher.protocol import CloseAction


@settings(max_examples=100, deadline=None)
@given(
    initial=st.floats(0.01, 5.0),
    factor=st.floats(1.0, 4.0),
    extra=st.floats(0.0, 60.0),
    jitter=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**32),
)
def test_each_delay_is_within_the_jitter_band_below_the_capped_exponential(
    initial: float, factor: float, extra: float, jitter: float, seed: int
) -> None:
    backoff = Backoff(initial, factor, initial + extra, jitter, rng=random.Random(seed))
    for n in range(40):
        base = min(backoff.maximum, initial * factor**n)
        delay = backoff.next()
        assert base * (1 - jitter) - 1e-9 <= delay <= base + 1e-9
        assert delay <= backoff.maximum + 1e-9


def test_without_jitter_the_sequence_is_exact_and_capped() -> None:
    backoff = Backoff(initial=1.0, factor=2.0, maximum=30.0, jitter=0.0)
    assert [backoff.next() for _ in range(7)] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert backoff.attempts == 7


def test_jitter_spreads_clients_that_fail_together() -> None:
    delays = [Backoff(jitter=0.25, rng=random.Random(seed)).next() for seed in range(200)]
    assert min(delays) >= 0.75
    assert max(delays) <= 1.0
    assert max(delays) - min(delays) > 0.2  # not all at the same instant
    assert len(set(delays)) > 150


def test_reset_starts_over() -> None:
    backoff = Backoff(jitter=0.0)
    for _ in range(5):
        backoff.next()
    backoff.reset()
    assert backoff.attempts == 0
    assert backoff.next() == 1.0


def test_a_huge_attempt_count_does_not_overflow() -> None:
    backoff = Backoff(initial=1.0, factor=10.0, maximum=30.0, jitter=0.0)
    for _ in range(2000):
        assert backoff.next() <= 30.0


def test_replace_gives_an_independent_copy_with_fresh_state() -> None:
    policy = Backoff(initial=0.5, jitter=0.0)
    policy.next()
    policy.next()
    copy = dataclasses.replace(policy)
    assert copy.attempts == 0
    assert copy.next() == 0.5
    assert policy.next() == 2.0


@pytest.mark.parametrize(
    "kwargs",
    [{"initial": 0.0}, {"factor": 0.5}, {"initial": 5.0, "maximum": 1.0}, {"jitter": 1.5}],
)
def test_invalid_settings_are_config_errors(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        Backoff(**kwargs)


# ----------------------------------------------------------------------------- reconnect policy


def policy(**kwargs: float) -> ReconnectPolicy:
    return ReconnectPolicy(Backoff(initial=1.0, jitter=0.0), **kwargs)


def test_immediate_is_immediate_once_per_healthy_period() -> None:
    p = policy(healthy_after=10.0)
    p.connected(0.0)
    assert p.next_delay(CloseAction.IMMEDIATE, 100.0) == 0.0
    # The server closes with 4200 again right after the reconnect: now it backs off.
    p.connected(100.1)
    assert p.next_delay(CloseAction.IMMEDIATE, 100.2) == 1.0
    p.connected(101.3)
    assert p.next_delay(CloseAction.IMMEDIATE, 101.4) == 2.0
    # After a healthy stretch, immediate again.
    p.connected(104.0)
    assert p.next_delay(CloseAction.IMMEDIATE, 200.0) == 0.0


def test_a_server_closing_4200_in_a_loop_cannot_cause_a_hot_loop() -> None:
    p = policy(healthy_after=10.0)
    now, total_wait, zero_delays = 0.0, 0.0, 0
    for _ in range(20):
        p.connected(now)
        now += 0.01  # closes right after accepting
        delay = p.next_delay(CloseAction.IMMEDIATE, now)
        zero_delays += delay == 0.0
        total_wait += delay
        now += delay
    assert zero_delays == 1
    assert total_wait > 60  # 20 attempts spread over minutes, not milliseconds


def test_accept_then_close_does_not_reset_the_backoff() -> None:
    p = policy(healthy_after=10.0)
    delays = []
    now = 0.0
    for _ in range(4):
        p.connected(now)
        now += 1.0
        delays.append(p.next_delay(CloseAction.BACKOFF_JITTER, now))
        now += delays[-1]
    assert delays == [1.0, 2.0, 4.0, 8.0]


def test_failed_connects_back_off_and_a_healthy_connection_resets() -> None:
    p = policy(healthy_after=10.0)
    assert [p.next_delay(CloseAction.BACKOFF_JITTER, t) for t in (0.0, 1.0, 3.0)] == [1, 2, 4]
    p.connected(10.0)
    assert p.next_delay(CloseAction.BACKOFF_JITTER, 25.0) == 1.0


def test_backoff_codes_wait_at_least_one_second() -> None:
    p = ReconnectPolicy(Backoff(initial=0.1, jitter=0.0), min_backoff=1.0)
    assert p.next_delay(CloseAction.BACKOFF, 0.0) == 1.0
    assert p.next_delay(CloseAction.BACKOFF_JITTER, 1.0) == pytest.approx(0.2)


def test_fatal_waits_the_fatal_retry_interval() -> None:
    p = policy(fatal_retry_interval=300.0)
    p.connected(0.0)
    assert p.next_delay(CloseAction.FATAL, 0.1) == 300.0
    assert p.next_delay(CloseAction.FATAL, 300.2) == 300.0
