"""Kick's Pusher unreachable: subscribes fail within ``connect_wait`` naming the cause, and the
operator gets a WARNING with the cause, not one line per retry (item 10 of issue 8).

The outage policy is pure (:class:`OutageLog`, tested with explicit times); the pool is tested
against the simulator stopped (its port refuses connections), refusing with close codes, and
hanging before the Pusher handshake, over real loopback sockets.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest

from kichat.errors import PusherUnavailable
from kichat.kick.pusher import PusherPool
from kichat.kick.pusher.outage import OutageLog, Recovery, Report

from conftest import UNIT, eventually
from pusher_helpers import Recorder, fast_backoff, open_sim

A = "chatrooms.668.v2"

# -- the policy, pure ----------------------------------------------------------------------------


def test_first_failure_warns_repeats_are_quiet_then_a_periodic_reminder() -> None:
    log = OutageLog(repeat_every=60)
    assert log.failed(1, "refused", 100.0) == Report("first", 0.0, 1)
    assert log.down and log.cause == "refused"
    for n, t in enumerate((101.0, 105.0, 159.0), start=2):
        assert log.failed(1, "refused", t) is None, n
    assert log.failed(1, "refused", 160.0) == Report("repeat", 60.0, 5)
    assert log.failed(1, "refused", 170.0) is None
    assert log.failed(1, "refused", 220.0) == Report("repeat", 120.0, 7)


def test_a_new_cause_warns_at_once() -> None:
    log = OutageLog(repeat_every=60)
    log.failed(1, "refused", 0.0)
    assert log.failed(1, "HTTP 403", 1.0) == Report("changed", 1.0, 2)
    assert log.failed(1, "HTTP 403", 2.0) is None
    assert log.failed(1, "refused", 3.0) == Report("changed", 3.0, 4)


def test_recovery_ends_the_outage_once_every_connection_is_back() -> None:
    log = OutageLog()
    assert log.connected(1, 0.0) is None  # no outage: nothing to report
    log.failed(1, "refused", 10.0)
    log.failed(2, "refused", 11.0)  # the same outage: no second warning
    assert log.connected(1, 12.0) is None  # connection 2 still cannot connect
    assert log.down
    assert log.connected(2, 15.0) == Recovery(5.0, 2)
    assert not log.down and log.cause is None
    # The next failure starts a new outage, with a new warning.
    assert log.failed(1, "refused", 20.0) == Report("first", 0.0, 1)


def test_a_closed_connection_no_longer_keeps_the_outage_going() -> None:
    log = OutageLog()
    log.failed(1, "refused", 0.0)
    log.failed(2, "refused", 0.0)
    log.forget(2)
    assert log.down
    log.forget(1)
    assert not log.down


# -- the pool, against the simulator -------------------------------------------------------------


@pytest.fixture
async def sim() -> AsyncIterator[Any]:
    async with open_sim() as server:
        yield server


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


def down_pool(sim: Any, recorder: Recorder, connect_wait: float) -> PusherPool:
    # A subscribe budget far longer than connect_wait: only connect_wait can end it early.
    return PusherPool(
        sim.pusher_url,
        on_event=recorder,
        backoff=fast_backoff(initial=0.05, maximum=0.1),
        subscribe_timeout=10 * UNIT,
        subscribe_retries=2,
        connect_wait=connect_wait,
        open_timeout=2 * UNIT,
    )


def pusher_records(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "kichat.kick.pusher" and r.levelno == level
    ]


async def test_kick_unreachable_subscribe_fails_within_connect_wait_and_warns_once(
    sim: Any, recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="kichat.kick.pusher")
    wait = 0.5 * UNIT
    await sim.stop()  # Kick is down: its port refuses connections
    loop = asyncio.get_running_loop()
    async with down_pool(sim, recorder, wait) as pool:
        started = loop.time()
        with pytest.raises(PusherUnavailable) as info:
            await pool.subscribe(A)
        elapsed = loop.time() - started
        assert wait * 0.9 <= elapsed < wait + 1.0 * UNIT  # not the 30 s subscribe budget
        assert re.search(r"no connection to Kick's Pusher for \d+\.\d s \(", str(info.value))
        assert f"connection refused by 127.0.0.1:{sim.port}" in str(info.value)
        assert pool.channels == frozenset()

        # Many failed attempts, one warning with the cause; the retries go to DEBUG.
        await eventually(lambda: pool.status().reconnects_by_code.get("connect_error", 0) >= 8)
        warnings = pusher_records(caplog, logging.WARNING)
        assert len(warnings) == 1, warnings
        assert "cannot connect to Kick's Pusher: connection refused by 127.0.0.1" in warnings[0]
        assert not [m for m in pusher_records(caplog, logging.INFO) if "disconnected" in m]
        quiet = [m for m in pusher_records(caplog, logging.DEBUG) if "cannot connect:" in m]
        assert len(quiet) == pool.status().reconnects_by_code["connect_error"] - 1

        # A subscribe during a long outage fails at once: the connection was down long enough.
        started = loop.time()
        with pytest.raises(PusherUnavailable):
            await pool.subscribe(A)
        assert loop.time() - started < 0.5 * UNIT

        # Kick is back: one INFO line says so, and subscribes work again.
        await sim.start()
        await eventually(lambda: pool.status().connected == 1, 5 * UNIT, "reconnected")
        back = [m for m in pusher_records(caplog, logging.INFO) if "is back after" in m]
        assert len(back) == 1, back
        assert "failed attempts" in back[0]
        await pool.subscribe(A)
        assert sim.subscribers(A) == 1
        assert len(pusher_records(caplog, logging.WARNING)) == 1


async def test_a_changed_cause_and_a_long_outage_warn_again(
    sim: Any, recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kichat.kick.pusher")
    sim.refuse_connections(10_000, code=4301)  # closed before the handshake, again and again
    async with down_pool(sim, recorder, 0.5 * UNIT) as pool:
        with pytest.raises(PusherUnavailable, match="closed with code 4301 before Pusher"):
            await pool.subscribe(A)
        pool.outage.repeat_every = 0.3 * UNIT
        await eventually(lambda: len(pusher_records(caplog, logging.WARNING)) >= 2)
        first, repeat = pusher_records(caplog, logging.WARNING)[:2]
        assert "closed with code 4301 before Pusher's handshake completed" in first
        assert "still no connection to Kick's Pusher after" in repeat
        assert "cause changed" not in repeat
        pool.outage.repeat_every = 600
        warned = len(pusher_records(caplog, logging.WARNING))
        await sim.stop()  # now refused at the TCP level: a new cause, a new warning at once
        await eventually(lambda: len(pusher_records(caplog, logging.WARNING)) > warned)
        changed = pusher_records(caplog, logging.WARNING)[warned]
        assert "cause changed" in changed
        assert "connection refused by" in changed


async def test_a_server_that_never_completes_the_handshake_fails_subscribes_in_time(
    sim: Any, recorder: Recorder
) -> None:
    sim.ignore_pings(True, new_connections=True)  # TCP and WebSocket open, then silence
    wait = 0.5 * UNIT
    loop = asyncio.get_running_loop()
    async with down_pool(sim, recorder, wait) as pool:
        started = loop.time()
        with pytest.raises(PusherUnavailable, match=r"still connecting to 127\.0\.0\.1"):
            await pool.subscribe(A)
        assert loop.time() - started < wait + 1.0 * UNIT
        sim.ignore_pings(False)
        await eventually(lambda: pool.status().connected == 1, 5 * UNIT, "connected")
        await pool.subscribe(A)
        assert sim.subscribers(A) == 1


async def test_an_http_error_on_the_handshake_is_named(recorder: Recorder) -> None:
    """Kick's edge answers blocked addresses with HTTP 403 instead of a WebSocket."""

    async def forbid(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    edge = await asyncio.start_server(forbid, "127.0.0.1", 0)
    port = edge.sockets[0].getsockname()[1]
    url = f"ws://127.0.0.1:{port}/app/32cbd69e4b950bf97679?protocol=7"
    pool = PusherPool(url, on_event=recorder, backoff=fast_backoff(), connect_wait=0.3 * UNIT)
    try:
        async with pool:
            with pytest.raises(PusherUnavailable) as info:
                await pool.subscribe(A)
        assert f"127.0.0.1:{port} answered the WebSocket handshake with HTTP 403" in str(info.value)
    finally:
        edge.close()
        await edge.wait_closed()
