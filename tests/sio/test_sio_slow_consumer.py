"""A client that stops reading is cut off; 1,000 real clients beside it keep receiving."""

from __future__ import annotations

import asyncio
import base64
import os
import socket

import pytest

from conftest import UNIT, node_script
from sio_harness import Harness, serve_sio

pytestmark = [pytest.mark.node, pytest.mark.slow]

SWARM = 1000
MESSAGES = 25
PAYLOAD = "x" * 16_000  # 25 x 16 KB = 400 KB per client, past the 256 KiB limit below


async def stalled_client(h: Harness, room: str) -> socket.socket:
    """A raw Socket.IO client that joins ``room`` and then never reads again."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: no autotuning
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", h.port))
    key = base64.b64encode(os.urandom(16))
    await loop.sock_sendall(
        sock,
        b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: "
        + key
        + b"\r\n\r\n",
    )
    await asyncio.wait_for(loop.sock_recv(sock, 4096), 5 * UNIT)  # 101 + the open packet

    def masked(text: bytes) -> bytes:
        mask = os.urandom(4)
        return (
            bytes([0x81, 0x80 | len(text)])
            + mask
            + bytes(b ^ mask[i % 4] for i, b in enumerate(text))
        )

    await loop.sock_sendall(sock, masked(b"40") + masked(b'42["join","' + room.encode() + b'"]'))
    await h.wait_for(lambda: h.sio.of("/").room_size(room) == SWARM + 1, 5 * UNIT)
    return sock


async def test_slow_consumer_is_cut_off_while_a_thousand_others_keep_receiving() -> None:
    options = {"outbound_buffer_limit": 256 * 1024, "send_buffer_size": 64 * 1024}
    async with (
        serve_sio(**options) as h,
        node_script("sio_swarm.mjs", h.url, str(SWARM), "room", "chat") as swarm,
    ):
        await swarm.until(lambda m: m["ev"] == "ready", timeout=60 * UNIT)
        stalled = await stalled_client(h, "room")
        nsp = h.sio.of("/")
        for n in range(MESSAGES):
            nsp.emit("chat", {"n": n, "body": PAYLOAD}, to="room")
            await asyncio.sleep(0.02 * UNIT)
        await h.wait_for(lambda: h.sio.stats.slow_clients == 1, 10 * UNIT)
        # The stalled socket lost its transport (it may still recover later); nobody else did.
        assert len(h.sio.detached) == 1
        assert nsp.room_size("room") == SWARM + 1

        report: dict[str, object] = {}
        for _ in range(100):
            swarm.send({"cmd": "report"})
            report = await swarm.until(lambda m: m["ev"] == "report")
            if report["counts"] == {"min": MESSAGES, "max": MESSAGES, "total": SWARM * MESSAGES}:
                break
            await asyncio.sleep(0.1 * UNIT)
        assert report["counts"] == {"min": MESSAGES, "max": MESSAGES, "total": SWARM * MESSAGES}
        assert report["disconnects"] == 0
        assert h.sio.stats.slow_clients == 1
        stalled.close()
