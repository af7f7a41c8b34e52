"""The benchmark's machinery: building the C client, installing the peer, owning child
processes, sampling /proc, and talking to the simulator and the load client.

Stdlib only; imported by bench/run.py (the same directory is on sys.path when it runs).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import queue
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
BUILD_DIR = BENCH_DIR / "build"


class BenchError(Exception):
    """The benchmark could not run as asked (the message says why)."""


def flags(**options: object) -> list[str]:
    """``flags(room_base=7)`` -> ``["--room-base", "7"]``."""
    return [w for k, v in options.items() for w in (f"--{k.replace('_', '-')}", str(v))]


# ------------------------------------------------------------------ a private redis-server


def start_redis(log_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A redis-server on a free loopback port, without persistence (cluster-mode runs)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise BenchError("--cluster needs redis-server (apt-get install redis-server)")
    port = free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(log_dir), "--logfile", str(log_dir / "redis.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return proc, f"redis://127.0.0.1:{port}/0"
        if proc.poll() is not None or time.monotonic() > deadline:
            raise BenchError(f"redis-server did not start (see {log_dir / 'redis.log'})")
        time.sleep(0.02)


# ------------------------------------------------------------------ building and installing


def build_loadclient(cc: str | None = None) -> Path:
    """Compile bench/loadclient.c into bench/build/ when the binary is missing or older."""
    src = BENCH_DIR / "loadclient.c"
    exe = BUILD_DIR / "loadclient"
    if exe.exists() and exe.stat().st_mtime >= src.stat().st_mtime:
        return exe
    BUILD_DIR.mkdir(exist_ok=True)
    tmp = exe.with_name(f"loadclient.{os.getpid()}.tmp")  # concurrent builds must not collide
    cmd = [cc or os.environ.get("CC", "cc"), "-O2", "-Wall", "-Wextra", "-o", str(tmp), str(src)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0 or proc.stderr.strip():
        tmp.unlink(missing_ok=True)
        raise BenchError(f"{shlex.join(cmd)} failed or warned:\n{proc.stderr}")
    tmp.replace(exe)
    return exe


def install_peer(source: Path) -> Path:
    """Copy the peer out of the (read-only) shared folder and ``npm ci`` it once per lockfile."""
    dest = BUILD_DIR / "peer"
    lock = (source / "package-lock.json").read_bytes()
    stamp = dest / ".installed"
    digest = hashlib.sha256(lock + (source / "relay.js").read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text() == digest and (dest / "node_modules").is_dir():
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("relay.js", "package.json", "package-lock.json"):
        (dest / name).unlink(missing_ok=True)
        shutil.copyfile(source / name, dest / name)
    npm = shutil.which("npm")
    if npm is None:
        raise BenchError("npm is not installed: cannot install the peer")
    cmd = [npm, "ci", "--no-audit", "--no-fund", "--prefix", str(dest)]
    print(f"installing the peer: {shlex.join(cmd)}", flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise BenchError(f"npm ci failed:\n{proc.stdout}\n{proc.stderr}")
    stamp.write_text(digest)
    return dest


# ------------------------------------------------------------------ processes and /proc


class Children:
    """Every process the runner starts. Each gets its own session so that stopping it stops
    its whole tree, and nothing else."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen[str]] = []
        self._logs: list[TextIO] = []

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        pipe_stdout: bool = False,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[str]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        err = open(self.log_dir / f"{name}.log", "w")  # noqa: SIM115 (closed in stop_all)
        self._logs.append(err)
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if pipe_stdout else err,
            stderr=err,
            text=True,
            start_new_session=True,
            cwd=REPO_DIR,
            env={**os.environ, **(env or {})},
        )
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[str], grace: float = 3.0) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(grace)
        # the leader may be gone while members of its group live on
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            self.stop(proc)
        self.procs.clear()
        for f in self._logs:
            f.close()
        self._logs.clear()


CLK_TCK = os.sysconf("SC_CLK_TCK")
IDLE_CORES = 0.05  # a server using less than this is not working through a backlog
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return raw[raw.rindex(")") + 2 :].split()  # fields from 3 (state) on; comm may hold spaces


def process_tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat_fields(int(entry))) is not None:
            children.setdefault(int(fields[1]), []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def tree_cpu_seconds(root: int) -> float:
    """utime+stime of the live tree, plus what the root has reaped from finished children."""
    ticks = 0
    for pid in process_tree(root):
        fields = _stat_fields(pid)
        if fields is None:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
        if pid == root:
            ticks += int(fields[13]) + int(fields[14])  # cutime, cstime
    return ticks / CLK_TCK


def system_busy_seconds() -> float:
    """CPU time every core spent on anything but idle and iowait, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def tree_rss_kib(root: int) -> int:
    total = 0
    for pid in process_tree(root):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_KIB
    return total


def raise_nofile(clients: int) -> None:
    """The load client and the server each hold one descriptor per client, plus some."""
    need = clients + 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < clients + 128:
        raise BenchError(
            f"RLIMIT_NOFILE hard limit is {hard}, too low for {clients} clients: raise it "
            f"(e.g. `ulimit -Hn {need}` as root, or LimitNOFILE= in systemd)"
        )
    if soft != resource.RLIM_INFINITY and soft < need:
        new = need if hard == resource.RLIM_INFINITY else min(need, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def gateway_stats(port: int, timeout: float = 10.0) -> dict[str, Any]:
    """The gateway's ``GET /stats`` (for one process, or the sum and each worker's figures)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/stats")
        stats: dict[str, Any] = json.loads(conn.getresponse().read())
        return stats
    finally:
        conn.close()


def wait_listening(proc: subprocess.Popen[str], port: int, name: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{name} exited with code {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise BenchError(f"{name} did not listen on port {port} within {timeout:.0f} s")


# ------------------------------------------------------------------ simulator control


class Sim:
    def __init__(self, port: int) -> None:
        self.port = port

    def _call(self, method: str, path: str, body: object = None) -> dict[str, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            payload = None if body is None else json.dumps(body)
            conn.request(method, path, payload, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        if resp.status != 200:
            raise BenchError(f"simulator {method} {path}: HTTP {resp.status}: {data[:200]!r}")
        result: dict[str, Any] = json.loads(data)
        return result

    def stats(self) -> dict[str, Any]:
        return self._call("GET", "/_sim/stats")

    def start_bench(self, chatroom_ids: list[int], rate: float, duration: float) -> None:
        body = {"chatroom_ids": chatroom_ids, "rate": rate, "duration": duration}
        if not self._call("POST", "/_sim/bench", body).get("started"):
            raise BenchError("simulator refused to start the bench traffic")

    def bench(self) -> dict[str, Any]:
        return self._call("GET", "/_sim/bench")

    def wait_subscribed(self, chatroom_ids: list[int], timeout: float) -> None:
        wanted = {f"chatrooms.{cid}.v2" for cid in chatroom_ids}
        deadline = time.monotonic() + timeout
        while True:
            subs = self.stats().get("subscriptions", {})
            missing = {ch for ch in wanted if subs.get(ch, 0) < 1}
            if not missing:
                return
            if time.monotonic() > deadline:
                raise BenchError(
                    f"{len(missing)} chatroom channels never subscribed upstream, "
                    f"e.g. {sorted(missing)[:3]}"
                )
            time.sleep(0.1)


# ------------------------------------------------------------------ the load client


class LoadClient:
    """The C client as a child; a thread turns its stdout into a queue of JSON objects."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self.delivered = 0
        self.last_recv_ns = 0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                self.lines.put(json.loads(line))

    def next(self, timeout: float) -> dict[str, Any]:
        try:
            msg = self.lines.get(timeout=timeout)
        except queue.Empty:
            code = self.proc.poll()
            why = f"exited with code {code}" if code is not None else f"silent for {timeout:.0f} s"
            raise BenchError(f"load client {why}") from None
        if msg.get("event") == "progress":
            self.delivered = int(msg["delivered"])
            self.last_recv_ns = int(msg["last_recv_ns"])
        return msg

    def until(self, event: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            msg = self.next(max(0.01, deadline - time.monotonic()))
            if msg.get("event") == event:
                return msg

    def drain(self, expected: int, server: int, quiet: float, limit: float) -> None:
        """Return once every expected delivery arrived, or once for ``quiet`` seconds nothing
        arrived while the server's tree stayed idle. A saturated server can go seconds without
        delivering (a long garbage collection, a backlog of writes), so silence alone is not
        the end; an idle server with nothing arriving is."""
        deadline = time.monotonic() + limit
        mark = (self.delivered, time.monotonic(), tree_cpu_seconds(server))
        while self.delivered < expected and time.monotonic() < deadline:
            self.next(5.0)
            now = time.monotonic()
            if self.delivered != mark[0]:
                mark = (self.delivered, now, tree_cpu_seconds(server))
            elif now - mark[1] >= quiet:
                cpu = tree_cpu_seconds(server)
                if cpu - mark[2] < IDLE_CORES * (now - mark[1]):
                    return
                mark = (self.delivered, now, cpu)

    def summary(self) -> dict[str, Any]:
        self.proc.send_signal(signal.SIGUSR1)
        return self.until("summary", 60)
