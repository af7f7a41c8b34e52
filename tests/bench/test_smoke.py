"""The benchmark's own checks.

* The C load client's parser, through its ``--selftest`` mode: crafted server byte streams
  (handshake, Engine.IO/Socket.IO packets, 7/16/64-bit frame lengths, frames split at every
  byte or packed several per read, fragments, control frames, the trailing recovery offset) are
  fed to the real code path, and what the client counted and sent is checked.
* The ``smoke`` load of ``bench/run.py`` against the gateway, end to end (skipped until the
  gateway and the simulator exist).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import UNIT

REPO = Path(__file__).resolve().parents[2]
RUNNER = REPO / "bench" / "run.py"
HARNESS = REPO / "bench" / "harness.py"
CHAT = "App\\Events\\ChatMessageEvent"
# RFC 6455 section 1.3: the key the selftest client uses and the answer it must accept
ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
SUBSCRIBE = '42["subscribe",{"channelName":"chan0","chatroomId":"700000"}]'


def _load_harness() -> Any:
    spec = importlib.util.spec_from_file_location("bench_harness", HARNESS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def loadclient() -> Path:
    if shutil.which("cc") is None:
        pytest.skip("no C compiler (cc) to build bench/loadclient.c")
    exe: Path = _load_harness().build_loadclient()
    return exe


# ------------------------------------------------------------------ crafting server bytes


def frame(
    payload: str | bytes, *, opcode: int = 1, fin: bool = True, form: int | None = None
) -> bytes:
    """A server frame (unmasked). ``form`` forces the 7/16/64-bit length encoding."""
    data = payload.encode() if isinstance(payload, str) else payload
    n = len(data)
    form = form or (7 if n < 126 else 16 if n < 65536 else 64)
    head = bytes([(0x80 if fin else 0) | opcode])
    if form == 7:
        head += bytes([n])
    elif form == 16:
        head += bytes([126]) + struct.pack("!H", n)
    else:
        head += bytes([127]) + struct.pack("!Q", n)
    return head + data


def upgrade(accept: str = ACCEPT) -> bytes:
    return (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept}\r\n\r\n"
    ).encode()


OPEN = frame(
    '0{"sid":"abc","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}'
)
CONNECTED = frame('40{"sid":"def"}')
HANDSHAKE = upgrade() + OPEN + CONNECTED


def chat(seq: int, *, offset: str | None = None, filler: int = 0, name: str = CHAT) -> str:
    """A Socket.IO event as a relay emits it. Nested ``content`` keys come first on purpose:
    only the top-level one carries the sequence number."""
    data: dict[str, Any] = {
        "id": f"m{seq}",
        "metadata": {"original_message": {"id": "x", "content": "999999 1"}},
        "sender": {"username": 'quote"}{,[', "identity": {"badges": [{"text": "content"}]}},
        "content": f"{seq} {time.time_ns()}",
        "channel_name": "chan0",
        "pad": "x" * filler,
    }
    args: list[Any] = [name, data] + ([offset] if offset is not None else [])
    return "42" + json.dumps(args, separators=(",", ":"))


def selftest(exe: Path, chunks: list[bytes]) -> dict[str, Any]:
    stream = b"".join(struct.pack("!I", len(c)) + c for c in chunks)
    proc = subprocess.run(
        [str(exe), "--selftest"], input=stream, capture_output=True, timeout=30 * UNIT, check=False
    )
    assert proc.returncode == 0, proc.stderr.decode()
    result: dict[str, Any] = json.loads(proc.stdout)
    result["sent"] = client_frames(bytes.fromhex(result["sent_hex"]))
    return result


def client_frames(data: bytes) -> list[tuple[int, bytes]]:
    """Decode what the client wrote; every client frame must be masked (RFC 6455 5.3)."""
    out, i = [], 0
    while i < len(data):
        b0, b1 = data[i], data[i + 1]
        assert b1 & 0x80, "client frame not masked"
        n, i = b1 & 0x7F, i + 2
        if n == 126:
            (n,), i = struct.unpack("!H", data[i : i + 2]), i + 2
        elif n == 127:
            (n,), i = struct.unpack("!Q", data[i : i + 8]), i + 8
        mask, i = data[i : i + 4], i + 4
        out.append((b0 & 0x0F, bytes(b ^ mask[k & 3] for k, b in enumerate(data[i : i + n]))))
        i += n
    return out


def texts(result: dict[str, Any]) -> list[str]:
    return [p.decode() for op, p in result["sent"] if op == 1]


# ------------------------------------------------------------------ parser tests


def test_handshake_then_events_in_one_read(loadclient: Path) -> None:
    events = b"".join(frame(chat(s)) for s in (1, 2, 3))
    r = selftest(loadclient, [HANDSHAKE + events])
    assert r["state"] == "subscribed"
    assert texts(r) == ["40", SUBSCRIBE]
    assert (r["delivered"], r["max_seq"], r["latencies"]) == (3, 3, 3)
    assert r["gaps"] == r["dups"] == r["reordered"] == r["bad_messages"] == 0


def test_every_split_point_gives_the_same_result(loadclient: Path) -> None:
    stream = HANDSHAKE + frame(chat(1)) + frame(chat(2, filler=300)) + frame(chat(3, offset="7-3"))
    r = selftest(loadclient, [stream[i : i + 1] for i in range(len(stream))])
    assert r["state"] == "subscribed"
    assert texts(r) == ["40", SUBSCRIBE]
    assert (r["delivered"], r["max_seq"], r["buffered"]) == (3, 3, 0)


def test_uneven_chunks_cut_inside_headers_and_lengths(loadclient: Path) -> None:
    body = b"".join(frame(chat(s, filler=200 * s)) for s in range(1, 6))
    stream = HANDSHAKE + body
    cuts = [5, 70, 71, 150, 151, 152, 400, 1000, len(stream) - 3]
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    r = selftest(loadclient, chunks)
    assert (r["state"], r["delivered"], r["max_seq"], r["buffered"]) == ("subscribed", 5, 5, 0)


def test_16_and_64_bit_lengths(loadclient: Path) -> None:
    frames = [
        frame(chat(1), form=16),  # short payload in the 16-bit form is still valid
        frame(chat(2, filler=1000)),  # 16-bit
        frame(chat(3, filler=70000)),  # 64-bit
        frame(chat(4), form=64),
    ]
    r = selftest(loadclient, [HANDSHAKE, b"".join(frames)])
    assert (r["delivered"], r["max_seq"], r["bad_messages"]) == (4, 4, 0)


def test_trailing_offset_and_nested_content_keys(loadclient: Path) -> None:
    # nested "content" fields hold "999999 1": counting them would show as a huge gap
    r = selftest(
        loadclient, [HANDSHAKE + frame(chat(1, offset="abc-1")) + frame(chat(2, offset="abc-2"))]
    )
    assert (r["delivered"], r["max_seq"], r["gaps"], r["bad_messages"]) == (2, 2, 0, 0)


def test_gaps_duplicates_and_reordering_are_told_apart(loadclient: Path) -> None:
    seqs = [1, 2, 4, 3, 3, 6, 2]
    r = selftest(loadclient, [HANDSHAKE + b"".join(frame(chat(s)) for s in seqs)])
    assert r["delivered"] == 5  # 1, 2, 4, 3, 6: each unique sequence once
    assert r["max_seq"] == 6  # so 5 is missing
    assert r["gaps"] == 2  # 2 -> 4 and 3 -> 6 (after 4)
    assert r["reordered"] == 1  # 3 arrived after 4
    assert r["dups"] == 2  # the second 3 and the second 2
    assert r["latencies"] == 5


def test_other_events_and_garbage_are_counted_not_delivered(loadclient: Path) -> None:
    stream = HANDSHAKE + frame(chat(1, name="App\\Events\\MessageDeletedEvent"))
    stream += frame('42["App\\\\Events\\\\ChatMessageEvent",{"content":"not numbers"}]')
    stream += frame('42["App\\\\Events\\\\ChatMessageEvent",{"id":1}]') + frame(chat(1))
    r = selftest(loadclient, [stream])
    assert (r["delivered"], r["other_events"], r["bad_messages"]) == (1, 1, 2)


def test_pings_are_answered(loadclient: Path) -> None:
    r = selftest(loadclient, [HANDSHAKE + frame("2") + frame(b"hb", opcode=9) + frame(chat(1))])
    assert r["sent"][2:] == [(1, b"3"), (0xA, b"hb")]
    assert r["delivered"] == 1


def test_fragmented_message_with_a_control_frame_inside(loadclient: Path) -> None:
    msg = chat(1, filler=500).encode()
    stream = HANDSHAKE + frame(msg[:100], fin=False) + frame(b"", opcode=9)
    stream += frame(msg[100:300], opcode=0, fin=False) + frame(msg[300:], opcode=0) + frame(chat(2))
    r = selftest(loadclient, [stream])
    assert (r["delivered"], r["max_seq"], r["bad_messages"]) == (2, 2, 0)
    assert r["sent"][2] == (0xA, b"")


def test_wrong_accept_key_fails_the_attempt(loadclient: Path) -> None:
    r = selftest(loadclient, [upgrade("AAAAAAAAAAAAAAAAAAAAAAAAAAA=") + OPEN + CONNECTED])
    assert r["state"] == "idle"  # scheduled for a retry
    assert r["retries"] == 1
    assert r["sent"] == []


def test_refused_upgrade_fails_the_attempt(loadclient: Path) -> None:
    r = selftest(loadclient, [b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"])
    assert (r["state"], r["retries"]) == ("idle", 1)


def test_close_frame_after_subscribe_is_a_disconnect(loadclient: Path) -> None:
    r = selftest(
        loadclient, [HANDSHAKE + frame(chat(1)) + frame(b"\x03\xe8bye", opcode=8) + frame(chat(2))]
    )
    assert (r["state"], r["disconnects"], r["delivered"]) == ("closed", 1, 1)
    assert r["sent"][-1] == (8, b"\x03\xe8")  # the close is echoed with its code


def test_masked_server_frame_is_a_protocol_error(loadclient: Path) -> None:
    masked = bytes([0x81, 0x80 | 1]) + b"\0\0\0\0" + b"3"
    r = selftest(loadclient, [HANDSHAKE + masked + frame(chat(1))])
    assert (r["state"], r["disconnects"], r["delivered"]) == ("closed", 1, 0)


# ------------------------------------------------------------------ the smoke load


def _missing_for_smoke() -> str | None:
    for module in ("kichat.app", "kichat.cli"):
        if importlib.util.find_spec(module) is None:
            return f"`python -m kichat serve` does not exist yet (no module {module})"
    if importlib.util.find_spec("kichat.sim.__main__") is None:
        return "the simulator (`python -m kichat.sim`) does not exist yet"
    return None


@pytest.mark.slow
@pytest.mark.skipif(_missing_for_smoke() is not None, reason=str(_missing_for_smoke()))
def test_smoke_load_against_the_gateway(loadclient: Path, tmp_path: Path) -> None:
    out = tmp_path / "smoke.json"
    cmd = [sys.executable, str(RUNNER), "--load=smoke", "--targets=project", f"--json={out}"]
    cmd.append(f"--out={tmp_path / 'logs'}")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120 * UNIT, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    fig = json.loads(out.read_text())["loads"]["smoke"]["project"]
    # N clients x R/s x T s: every message must reach every client of its chatroom
    assert fig["expected"] == 20 * 5 * 2
    assert fig["delivered"] == fig["expected"]
    assert fig["gaps"] == fig["missing"] == fig["dups"] == fig["reordered"] == 0
    assert fig["connect_failures"] == fig["disconnects"] == fig["bad_messages"] == 0
    assert 0 < fig["latency_ms"]["p50"] <= fig["latency_ms"]["max"]
