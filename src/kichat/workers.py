"""``kichat serve --workers N``: every core of one machine, as nodes of one cluster.

One supervisor process starts N worker processes and restarts any that dies. Each worker is a
complete gateway and a node of the cluster (node id ``<base>w<i>``, :mod:`kichat.broker` on the
configured Redis): feeds are owned once across the workers, sessions recover on any of them.

Connections: every worker listens on the same address with ``SO_REUSEPORT``, so the kernel
spreads connections over them (by a hash of the client's address and port, which spreads
WebSocket connections evenly; a shared accept queue would give most of them to whichever
worker happened to be idle). A long-polling request must reach the worker that owns its
session, whose id starts with that worker's node id: when a worker sees a new request on an
idle connection whose ``sid`` names another worker, it passes the connection itself (the file
descriptor, with ``SCM_RIGHTS`` over a Unix socket) and the bytes read so far to that worker,
which serves it from then on, keep-alive included. There is no table to fill after a handshake
(socket.io-sticky's race) and no front process in the data path.

``/stats`` and ``/metrics`` answer for the whole server: the worker that gets the request asks
the others over their private Unix sockets and adds their figures (every metric gets a
``worker`` label; ``sum without (worker)`` is the server's total).
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import httpx

if TYPE_CHECKING:
    from kichat.config import Settings
    from kichat.http import HttpServer

log = logging.getLogger("kichat.workers")

ENV: Final = "_KICHAT_WORKER"  # not KICHAT_*: that prefix is the configuration's
_MAX_HANDOFF: Final = 64 * 1024  # what a worker passes along with a connection
_SID: Final = re.compile(rb"[?&]sid=([a-z0-9]{1,13})w([0-9]{1,2})_")


def worker_count(value: str) -> int:
    """``server.workers`` as a number: ``auto`` is the number of CPUs this process may use."""
    if value == "auto":
        return (
            len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else (os.cpu_count() or 1)
        )
    return int(value)


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """Who this worker is, handed down by the supervisor in the environment."""

    index: int
    count: int
    base: str
    directory: str
    supervisor: int  # its pid: a worker whose supervisor is gone stops too

    @property
    def node_id(self) -> str:
        return f"{self.base}w{self.index}"

    def handoff_path(self, index: int) -> str:
        return os.path.join(self.directory, f"w{index}.fd")

    def http_path(self, index: int) -> str:
        return os.path.join(self.directory, f"w{index}.http")

    def encode(self) -> str:
        return f"{self.index}:{self.count}:{self.supervisor}:{self.base}:{self.directory}"

    @classmethod
    def from_env(cls) -> WorkerSpec | None:
        raw = os.environ.get(ENV)
        if not raw:
            return None
        index, count, supervisor, base, directory = raw.split(":", 4)
        return cls(int(index), int(count), base, directory, int(supervisor))


def follow_supervisor(spec: WorkerSpec) -> None:
    """Have the kernel send this worker SIGTERM (a drain) when its supervisor dies, even by
    SIGKILL, so that no worker is left serving unsupervised (Linux; elsewhere a no-op)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != spec.supervisor:  # it died before we asked
        os.kill(os.getpid(), signal.SIGTERM)


class WorkerLink:
    """One worker's end of the connection handoff."""

    def __init__(self, spec: WorkerSpec, http: HttpServer) -> None:
        self.spec = spec
        self.http = http
        self.handed = 0  # connections passed to another worker
        self.adopted = 0  # connections another worker passed here
        self._in: socket.socket | None = None
        self._out = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        path = self.spec.handoff_path(self.spec.index)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # left by this worker's previous life
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.setblocking(False)
        self._in = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._readable)
        self.http.redirect = self.redirect

    def close(self) -> None:
        if self._in is not None:
            asyncio.get_running_loop().remove_reader(self._in.fileno())
            self._in.close()
            self._in = None
        self._out.close()

    def redirect(self, head: bytes, transport: asyncio.Transport) -> bool:
        """Pass the connection on if its request's ``sid`` names another worker."""
        line = head.split(b"\n", 1)[0]
        match = _SID.search(line)
        if match is None or match.group(1).decode() != self.spec.base:
            return False
        index = int(match.group(2))
        if index == self.spec.index or index >= self.spec.count or len(head) > _MAX_HANDOFF:
            return False
        raw = transport.get_extra_info("socket")
        if raw is None:
            return False
        fd = os.dup(raw.fileno())
        try:
            rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))]
            self._out.sendmsg([head], rights, 0, self.spec.handoff_path(index))
        except OSError as exc:
            # That worker is not there (restarting): serve it here; the client then hears its
            # session is unknown, reconnects and recovers it.
            log.debug("cannot pass a connection to worker %d: %s", index, exc)
            return False
        finally:
            os.close(fd)
        self.handed += 1
        return True

    def _readable(self) -> None:
        assert self._in is not None
        try:
            data, fds, _, _ = socket.recv_fds(self._in, _MAX_HANDOFF, 1)
        except (BlockingIOError, InterruptedError):
            return
        for fd in fds:
            sock = socket.socket(fileno=fd)
            task = asyncio.get_running_loop().create_task(self._adopt(sock, data))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _adopt(self, sock: socket.socket, data: bytes) -> None:
        try:
            await self.http.adopt(sock, data)
            self.adopted += 1
        except OSError as exc:
            log.debug("a connection passed here was gone: %s", exc)
            sock.close()


# -- the whole server's figures ------------------------------------------------------------------


async def others(spec: WorkerSpec, path: str) -> dict[int, httpx.Response | str]:
    """``path`` from every other worker (its private Unix socket), or why not."""

    async def one(index: int) -> httpx.Response | str:
        transport = httpx.AsyncHTTPTransport(uds=spec.http_path(index))
        try:
            async with httpx.AsyncClient(transport=transport, timeout=2.0) as http:
                return await http.get(f"http://worker{path}")
        except httpx.HTTPError as exc:
            return f"no answer: {exc}"

    indexes = [i for i in range(spec.count) if i != spec.index]
    answers = await asyncio.gather(*(one(i) for i in indexes))
    return dict(zip(indexes, answers, strict=True))


async def all_stats(spec: WorkerSpec, mine: dict[str, Any]) -> dict[str, Any]:
    """Every worker's ``/stats``, and their numbers added up."""
    workers: dict[str, Any] = {spec.node_id: mine}
    for index, answer in (await others(spec, "/stats?worker=1")).items():
        name = f"{spec.base}w{index}"
        if isinstance(answer, str) or answer.status_code != 200:
            workers[name] = {"error": answer if isinstance(answer, str) else answer.text[:200]}
        else:
            workers[name] = answer.json()
    total = _add_up([w for w in workers.values() if "error" not in w])
    return {"workers": workers, "total": total, "ready": all(
        w.get("ready") is True for w in workers.values()
    )}  # fmt: skip


def _add_up(parts: list[Any]) -> Any:
    """Numbers added, dicts merged key by key; anything else from the first part."""
    if not parts:
        return None
    first = parts[0]
    if isinstance(first, bool) or not isinstance(first, int | float | dict):
        return first
    if isinstance(first, dict):
        keys = dict.fromkeys(k for p in parts if isinstance(p, dict) for k in p)
        return {k: _add_up([p[k] for p in parts if isinstance(p, dict) and k in p]) for k in keys}
    return sum(p for p in parts if isinstance(p, int | float) and not isinstance(p, bool))


async def all_metrics(spec: WorkerSpec, mine: str) -> str:
    """Every worker's metrics in one exposition, each sample labelled with its worker."""
    texts = {spec.index: mine}
    for index, answer in (await others(spec, "/metrics?worker=1")).items():
        if not isinstance(answer, str) and answer.status_code == 200:
            texts[index] = answer.text
    families: dict[str, list[str]] = {}
    headers: dict[str, list[str]] = {}
    for index in sorted(texts):
        family = ""
        for line in texts[index].splitlines():
            if line.startswith("#"):
                parts = line.split(" ", 3)
                if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                    family = parts[2]
                    header = headers.setdefault(family, [])
                    if line not in header:
                        header.append(line)
                    families.setdefault(family, [])
                continue
            if line:
                families.setdefault(family, []).append(_labelled(line, f"{spec.base}w{index}"))
    out = []
    for family, samples in families.items():
        out += headers.get(family, [])
        out += samples
    return "\n".join(out) + "\n"


def _labelled(sample: str, worker: str) -> str:
    name_end = next((i for i, ch in enumerate(sample) if ch in "{ "), len(sample))
    label = f'worker="{worker}"'
    if sample[name_end : name_end + 1] == "{":
        close = sample[name_end + 1 :].startswith("}")
        return f"{sample[: name_end + 1]}{label}{'' if close else ','}{sample[name_end + 1 :]}"
    return f"{sample[:name_end]}{{{label}}}{sample[name_end:]}"


# -- the supervisor --------------------------------------------------------------------------------


def supervise(settings: Settings, argv: list[str]) -> int:
    """Run ``kichat serve`` (``argv``) as ``server.workers`` worker processes until SIGTERM."""
    count = worker_count(settings.server.workers)
    host, port = settings.server.host, settings.server.port
    port, problem = _free_port(host, port)
    if problem is not None:
        print(f"kichat serve: {problem}", file=sys.stderr)
        return 2
    argv = [*argv, "--port", str(port)]  # port 0 becomes one port for every worker
    directory = tempfile.mkdtemp(prefix="kichat-workers-")
    base = settings.cluster.node_id or secrets.token_hex(3)
    specs = [WorkerSpec(i, count, base, directory, os.getpid()) for i in range(count)]
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("kichat serve: %d workers on %s:%d (node ids %sw0-%d)", count, host, port, base,
             count - 1)  # fmt: skip
    procs = {spec.index: _spawn(spec, argv) for spec in specs}
    started = dict.fromkeys(procs, time.monotonic())
    failures = dict.fromkeys(procs, 0)
    try:
        while not stopping:
            time.sleep(0.1)
            for spec in specs:
                proc = procs[spec.index]
                code = proc.poll()
                if code is None or stopping:
                    continue
                if time.monotonic() - started[spec.index] > 60:
                    failures[spec.index] = 0  # it ran well for a while: start over fresh
                failures[spec.index] += 1
                delay = min(30.0, 0.5 * 2 ** (failures[spec.index] - 1))
                log.warning("worker %s exited with %s; restarting it in %.1f s", spec.node_id,
                            code, delay)  # fmt: skip
                deadline = time.monotonic() + delay
                while time.monotonic() < deadline and not stopping:
                    time.sleep(0.05)
                if not stopping:
                    procs[spec.index] = _spawn(spec, argv)
                    started[spec.index] = time.monotonic()
    finally:
        _stop_all(list(procs.values()), settings.server.shutdown_timeout + 5)
        shutil.rmtree(directory, ignore_errors=True)
    return 0


def _spawn(spec: WorkerSpec, argv: list[str]) -> subprocess.Popen[bytes]:
    env = {**os.environ, ENV: spec.encode()}
    return subprocess.Popen([sys.executable, "-m", "kichat", *argv], env=env)


def _stop_all(procs: list[subprocess.Popen[bytes]], grace: float) -> None:
    """SIGTERM every worker (each drains), then wait; SIGKILL what is still there after."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(max(0.0, deadline - time.monotonic()))
        if proc.poll() is None:
            log.warning("worker %d did not stop within %.0f s: killing it", proc.pid, grace)
            proc.kill()
            proc.wait()


def _free_port(host: str, port: int) -> tuple[int, str | None]:
    """Whether the workers can listen on ``host:port`` (checked once, before starting them);
    port 0 is resolved here, so that every worker listens on the same one."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            return port, (
                f"{host}:{port} is already in use ({exc.strerror}); choose another port with --port"
            )
        bound: int = probe.getsockname()[1]
    return bound, None
