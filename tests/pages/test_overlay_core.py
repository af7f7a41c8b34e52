"""Runs the overlay's JavaScript unit tests (overlay_core.test.cjs) with Node's built-in test
runner: no npm package needed, only node."""

from __future__ import annotations

import asyncio
import re
import shutil
from pathlib import Path

import pytest

from conftest import UNIT

pytestmark = pytest.mark.node


async def test_overlay_core_javascript() -> None:
    script = Path(__file__).with_name("overlay_core.test.cjs")
    proc = await asyncio.create_subprocess_exec(
        shutil.which("node") or "node",
        "--test",
        "--test-reporter=tap",
        str(script),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60 * UNIT)
    report = out.decode(errors="replace")
    assert proc.returncode == 0, report
    assert "# fail 0" in report, report
    declared = len(re.findall(r"^test\(", script.read_text(), re.MULTILINE))
    assert declared > 0
    assert f"# pass {declared}\n" in report, report  # every test ran, none was skipped
