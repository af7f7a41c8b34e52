"""Debian's real nginx, run unprivileged in a test (no system configuration is touched).

:func:`run_nginx` writes a main configuration around one site file (from deploy/, templated by
the caller to free loopback ports), starts nginx in the foreground and waits until it listens.
Locally a missing nginx skips the test; under CI it fails it (``.ci/run`` installs nginx).
"""

from __future__ import annotations

import asyncio
import shutil
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from conftest import IN_CI, UNIT, eventually

# Debian installs it in /usr/sbin, which is not on every user's PATH.
NGINX = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")


def require_nginx() -> str:
    if NGINX is None:
        if IN_CI:
            pytest.fail("CI: nginx is missing; .ci/run installs Debian's nginx package")
        pytest.skip("nginx is not installed (apt-get install nginx)")
    return NGINX


@asynccontextmanager
async def run_nginx(site: str, port: int, tmp: Path) -> AsyncIterator[str]:
    """nginx serving ``site`` (an http-level configuration that listens on ``port``)."""
    nginx = require_nginx()
    (tmp / "site.conf").write_text(site)
    temp = {name: tmp / name for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi")}
    for path in temp.values():
        path.mkdir(exist_ok=True)
    main = tmp / "nginx.conf"
    main.write_text(
        f"""
daemon off;
master_process off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log info;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {temp["body"]};
    proxy_temp_path {temp["proxy"]};
    fastcgi_temp_path {temp["fastcgi"]};
    uwsgi_temp_path {temp["uwsgi"]};
    scgi_temp_path {temp["scgi"]};
    include {tmp}/site.conf;
}}
"""
    )
    proc = await asyncio.create_subprocess_exec(
        nginx, "-p", str(tmp), "-c", str(main), "-e", str(tmp / "error.log"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:

        def listening() -> bool:
            assert proc.returncode is None, (tmp / "error.log").read_text()
            with socket.socket() as probe:
                return probe.connect_ex(("127.0.0.1", port)) == 0

        await eventually(listening, 10 * UNIT, "nginx to listen")
        yield f"http://127.0.0.1:{port}"
    finally:
        if proc.returncode is None:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 10 * UNIT)
