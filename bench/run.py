"""Side-by-side fan-out benchmark: the kichat gateway and the Node.js peer on the same load.

For each target, in one run: start the Kick simulator, start the server pointed at it, connect N
Socket.IO clients (the C load client) spread over K chatrooms, publish R chat messages per second
per chatroom for T seconds, and measure delivery, sequence gaps, latency, server CPU per delivery
and server memory per client. See bench/README.md for the method.

    python bench/run.py                     # spread and bigroom, project then peer
    python bench/run.py --load smoke --targets project --json out.json
    python bench/run.py --write-results     # also regenerate bench/RESULTS.md

Stdlib only (plus the installed project, started as a child process). Every process it starts
runs in its own session and is killed on exit, Ctrl-C and errors included.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.util
import json
import os
import platform
import shlex
import shutil
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from harness import (
    BENCH_DIR,
    REPO_DIR,
    BenchError,
    Children,
    LoadClient,
    Sim,
    build_loadclient,
    flags,
    free_port,
    gateway_stats,
    install_peer,
    raise_nofile,
    start_redis,
    system_busy_seconds,
    tree_cpu_seconds,
    tree_rss_kib,
    wait_listening,
)

OUT_DIR = BENCH_DIR / "out"
RESULTS_MD = BENCH_DIR / "RESULTS.md"
MANUAL_MARKER = "<!-- recorded by hand -->"
DEFAULT_PEER_DIR = REPO_DIR.parent / "shared" / "peers" / "node-socketio-relay"
PUSHER_KEY = "32cbd69e4b950bf97679"
ROOM_BASE = 700000
TARGET_NAMES = ("project", "peer")


@dataclass(frozen=True)
class Load:
    name: str
    clients: int  # N
    rooms: int  # K; client i joins room i % K
    rate: float  # R messages/s per chatroom
    duration: float  # T seconds
    targets: tuple[str, ...] = TARGET_NAMES

    def describe(self) -> str:
        per_s = self.clients * self.rate
        return (
            f"N={self.clients} clients, K={self.rooms} chatrooms, R={self.rate:g}/s per chatroom, "
            f"T={self.duration:g} s ({per_s:,.0f} deliveries/s)"
        )


LOADS = {
    "spread": Load("spread", 2000, 20, 20, 10),
    "bigroom": Load("bigroom", 5000, 1, 20, 10),
    "scale": Load("scale", 10000, 100, 10, 10, targets=("project",)),
    # The --workers target: 20,000 WebSocket clients over 200 chatrooms.
    "scale20k": Load("scale20k", 20000, 200, 10, 10, targets=("project",)),
    "smoke": Load("smoke", 20, 2, 5, 2),
}
DEFAULT_LOADS = ("spread", "bigroom")


# ------------------------------------------------------------------ command lines (one place)


def sim_command(port: int) -> list[str]:
    return [sys.executable, "-m", "kichat.sim", *flags(port=port)]


def project_command(
    port: int, sim_port: int, redis_url: str | None = None, workers: int = 1
) -> list[str]:
    """The gateway under test, pointed at the simulator. Adjust here if its CLI changes."""
    query = "protocol=7&client=js&version=8.4.0&flash=false"
    cluster = flags(redis_url=redis_url, node_id="bench") if redis_url else []
    if workers > 1:
        cluster += flags(workers=workers)
    return [
        *(sys.executable, "-m", "kichat", "serve"),
        *flags(
            port=port,
            pusher_url=f"ws://127.0.0.1:{sim_port}/app/{PUSHER_KEY}?{query}",
            kick_api_url=f"http://127.0.0.1:{sim_port}",
        ),
        *cluster,
    ]


def project_env() -> dict[str, str]:
    """Settings that differ from the gateway's defaults: every bench client comes from
    127.0.0.1 and thousands connect at once, so the per-IP connection limits (abuse guards, 10
    by default) and the cap on handshakes in progress must not apply."""
    return {
        "KICHAT_LIMITS_CONNECTIONS_PER_IP": "1000000",
        "KICHAT_LIMITS_PENDING_CONNECTIONS_PER_IP": "1000000",
        "KICHAT_SOCKETIO_MAX_PENDING_CONNECTIONS": "10000000",
    }


def peer_command(peer_dir: Path, port: int, sim_port: int) -> list[str]:
    node = shutil.which("node") or "node"
    return [
        node,
        str(peer_dir / "relay.js"),
        *flags(port=port, pusher_host="127.0.0.1", pusher_port=sim_port),
    ]


def template_command(template: str, **values: int) -> list[str]:
    """``--sim-cmd``/``--project-cmd`` overrides: shell-like words with {port}, {sim_port}."""
    return [word.format(**values) for word in shlex.split(template)]


# ------------------------------------------------------------------ one target on one load


@dataclass
class Options:
    peer_dir: Path | None
    sim_cmd: str | None
    project_cmd: str | None
    connect_rate: float
    settle: float
    drain_quiet: float
    drain_limit: float
    log_dir: Path
    loadclient: Path = field(default=Path())
    redis_url: str | None = None  # --cluster: the project runs in cluster mode on this Redis
    redis_pid: int | None = None
    workers: int = 1


def server_argv(target: str, opts: Options, port: int, sim_port: int) -> list[str]:
    if target == "peer":
        assert opts.peer_dir is not None
        return peer_command(opts.peer_dir, port, sim_port)
    if opts.project_cmd:
        return template_command(opts.project_cmd, port=port, sim_port=sim_port)
    return project_command(port, sim_port, opts.redis_url, opts.workers)


@dataclass
class Samples:
    """What one target's run measured, before it is turned into figures."""

    ready: dict[str, Any]
    summary: dict[str, Any]
    published: dict[int, int]
    expected: int
    cpu0: dict[str, float]
    cpu1: dict[str, float]
    wall: float
    rss_before: int
    rss_after: int


def run_target(target: str, load: Load, opts: Options) -> dict[str, Any]:
    children = Children(opts.log_dir / f"{load.name}-{target}")
    try:
        return figures(target, load, measure(children, target, load, opts))
    finally:
        children.stop_all()


def measure(children: Children, target: str, load: Load, opts: Options) -> Samples:
    room_ids = [ROOM_BASE + r for r in range(load.rooms)]
    sim_port, port = free_port(), free_port()
    sim_argv = (
        template_command(opts.sim_cmd, port=sim_port) if opts.sim_cmd else sim_command(sim_port)
    )
    sim_proc = children.start("sim", sim_argv)
    wait_listening(sim_proc, sim_port, "simulator", 30)
    sim = Sim(sim_port)
    env = project_env() if target == "project" else None
    server = children.start("server", server_argv(target, opts, port, sim_port), env=env)
    wait_listening(server, port, target, 30)
    if target == "project" and opts.workers > 1:
        wait_workers(port, opts.workers, 60)
    time.sleep(opts.settle)
    rss_before = tree_rss_kib(server.pid)

    argv = flags(
        port=port,
        clients=load.clients,
        rooms=load.rooms,
        room_base=ROOM_BASE,
        connect_rate=opts.connect_rate,
        progress=0.25,
    )
    client = LoadClient(
        children.start("loadclient", [str(opts.loadclient), *argv], pipe_stdout=True)
    )
    ready = client.until("ready", load.clients / opts.connect_rate + 120)
    sim.wait_subscribed(room_ids, 60)
    time.sleep(opts.settle)  # subscribes sent after the first one of each room may be in flight
    rss_after = tree_rss_kib(server.pid)
    if target == "project" and opts.workers > 1:
        ready["worker_sockets"] = worker_sockets(port)

    tree = {"server": server.pid, "sim": sim_proc.pid, "client": client.proc.pid}
    if opts.redis_pid is not None and target == "project":
        tree["redis"] = opts.redis_pid
    cpu0 = {name: tree_cpu_seconds(pid) for name, pid in tree.items()}
    cpu0["machine"] = system_busy_seconds()
    wall0 = time.monotonic()
    sim.start_bench(room_ids, load.rate, load.duration)
    time.sleep(load.duration)
    while (bench := sim.bench()).get("running"):
        time.sleep(0.1)
    published = {int(k): int(v) for k, v in bench["published"].items()}
    members = [len(range(r, load.clients, load.rooms)) for r in range(load.rooms)]
    expected = sum(published.get(cid, 0) * members[r] for r, cid in enumerate(room_ids))
    client.drain(expected, server.pid, opts.drain_quiet, opts.drain_limit)
    wall = time.monotonic() - wall0
    cpu1 = {name: tree_cpu_seconds(pid) for name, pid in tree.items()}
    cpu1["machine"] = system_busy_seconds()
    summary = client.summary()
    return Samples(ready, summary, published, expected, cpu0, cpu1, wall, rss_before, rss_after)


def wait_workers(port: int, count: int, timeout: float) -> None:
    """``kichat serve --workers``: every worker listening and ready, not just the first."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            stats = gateway_stats(port, timeout=2)
            if len(stats.get("workers", {})) == count and stats.get("ready"):
                return
        except (OSError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise BenchError(f"the {count} workers were not all ready within {timeout:.0f} s")
        time.sleep(0.2)


def worker_sockets(port: int) -> dict[str, int]:
    """How the kernel spread the clients over the workers (SO_REUSEPORT)."""
    stats = gateway_stats(port, timeout=5)
    return {w: s["clients"]["sockets"] for w, s in stats.get("workers", {}).items()}


def figures(target: str, load: Load, m: Samples) -> dict[str, Any]:
    summary, wall = m.summary, m.wall
    used = {k: m.cpu1[k] - m.cpu0[k] for k in m.cpu0}
    delivered = int(summary["delivered"])
    server_cpu = used["server"]
    clients = max(1, int(m.ready["subscribed"]))
    span_ns = int(summary["last_recv_ns"]) - int(summary["first_recv_ns"])
    return {
        "target": target,
        "load": load.name,
        "expected": m.expected,
        "published": sum(m.published.values()),
        "delivered": delivered,
        "delivered_pct": 100.0 * delivered / m.expected if m.expected else 0.0,
        "gaps": summary["gaps"],
        "missing": summary["missing"],
        "dups": summary["dups"],
        "reordered": summary["reordered"],
        "connect_failures": summary["connect_failures"],
        "disconnects": summary["disconnects"],
        "bad_messages": summary["bad_messages"],
        "latency_ms": summary["latency_ms"],
        "server_cpu_s": round(server_cpu, 3),
        "server_cpu_us_per_delivery": 1e6 * server_cpu / delivered if delivered else None,
        "server_cores": server_cpu / wall,
        "server_rss_before_kib": m.rss_before,
        "server_rss_after_kib": m.rss_after,
        "memory_kib_per_client": (m.rss_after - m.rss_before) / clients,
        "client_cores": used["client"] / wall,
        "client_cpu_s_total": summary["cpu_user_s"] + summary["cpu_sys_s"],
        "loadclient_summary": summary,
        "sim_cores": used["sim"] / wall,
        # cluster mode's Redis: part of the system under test, reported apart
        "redis_cores": used.get("redis", 0.0) / wall,
        "redis_cpu_us_per_delivery": 1e6 * used.get("redis", 0.0) / delivered
        if delivered
        else None,
        # everything else the machine ran meanwhile: other people's work competes for the cores
        "other_cores": (
            used["machine"] - used["server"] - used["sim"] - used["client"] - used.get("redis", 0.0)
        )
        / wall,
        "window_s": round(wall, 3),
        "delivery_span_s": span_ns / 1e9 if span_ns > 0 else 0.0,
        "connect_s": m.ready["elapsed_s"],
        "worker_sockets": m.ready.get("worker_sockets"),
    }


# ------------------------------------------------------------------ reporting


ROWS: list[tuple[str, str, bool]] = [  # (label, format key, lower is better -> ratio shown)
    ("delivered / expected", "delivered", False),
    ("gaps / missing / dups / reordered", "seq", False),
    ("latency p50 (ms)", "p50", True),
    ("latency p99 (ms)", "p99", True),
    ("latency max (ms)", "max", True),
    ("server CPU per delivery (µs)", "cpu", True),
    ("server CPU (cores, traffic window)", "cores", True),
    ("server memory per client (KiB)", "mem", True),
    ("load client CPU (cores)", "client", False),
    ("simulator CPU (cores)", "sim", False),
    ("Redis CPU (cores; cluster mode)", "redis", False),
    ("rest of the machine, CPU (cores)", "other", False),
]


def cell(fig: dict[str, Any], key: str) -> tuple[str, float | None]:
    lat = fig["latency_ms"]
    if key == "delivered":
        return f"{fig['delivered']:,} / {fig['expected']:,} ({fig['delivered_pct']:.2f} %)", None
    if key == "seq":
        return f"{fig['gaps']} / {fig['missing']} / {fig['dups']} / {fig['reordered']}", None
    if key in ("p50", "p99", "max"):
        return f"{lat[key]:,.1f}", float(lat[key])
    if key == "cpu":
        v = fig["server_cpu_us_per_delivery"]
        return ("n/a", None) if v is None else (f"{v:.2f}", float(v))
    if key == "cores":
        return f"{fig['server_cores']:.2f}", float(fig["server_cores"])
    if key == "mem":
        return f"{fig['memory_kib_per_client']:.1f}", float(fig["memory_kib_per_client"])
    return f"{fig[key + '_cores']:.2f}", None


def table(load: Load, figs: dict[str, dict[str, Any]]) -> list[str]:
    names = [t for t in TARGET_NAMES if t in figs]
    both = len(names) == 2
    head = ["metric", *names] + (["project / peer"] if both else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, key, ratio in ROWS:
        cells = [cell(figs[n], key) for n in names]
        row = [label, *(c[0] for c in cells)]
        if both:
            a, b = cells[0][1], cells[1][1]
            row.append(f"{a / b:.2f}" if ratio and a is not None and b else "")
        lines.append("| " + " | ".join(row) + " |")
    return lines


def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load1 = os.getloadavg()[0]
    return (
        f"{os.cpu_count()} CPUs ({model}), Linux {platform.release()}, "
        f"load average {load1:.2f} at the start"
    )


CLIENT_BUSY = 0.7  # cores; the load client is single-threaded, so 1.0 would mean saturated


def warnings(figs: dict[str, dict[str, Any]]) -> list[str]:
    out = []
    for name, fig in figs.items():
        if fig["connect_failures"] or fig["disconnects"] or fig["bad_messages"]:
            out.append(
                f"{name}: {fig['connect_failures']} connect failures, "
                f"{fig['disconnects']} disconnects, {fig['bad_messages']} unparsable messages"
            )
        if fig["client_cores"] > CLIENT_BUSY:
            out.append(
                f"{name}: the load client used {fig['client_cores']:.2f} cores: it may have been "
                "a bottleneck, treat latency figures with care"
            )
    return out


def section(load: Load, figs: dict[str, dict[str, Any]], command: str, when: str, host: str) -> str:
    notes = [f"- {w}" for w in warnings(figs)]
    body = [
        f"<!-- load:{load.name} -->",
        f"## {load.name}: {load.describe()}",
        "",
        f"- command: `{command}`",
        f"- date: {when}",
        f"- machine: {host}",
        "",
        *table(load, figs),
        *(["", *notes] if notes else []),
        f"<!-- /load:{load.name} -->",
    ]
    return "\n".join(body)


RESULTS_HEADER = """# Fan-out benchmark results

Regenerated by `python bench/run.py --write-results` (one section per load; a run replaces the
sections of the loads it ran). Method: bench/README.md. Ratios are project / peer from the same
run; lower is better. Absolute figures move with the machine's load; compare ratios.
"""


def write_results(sections: dict[str, str]) -> None:
    old = RESULTS_MD.read_text() if RESULTS_MD.exists() else ""
    kept: dict[str, str] = {}
    for name in LOADS:
        start, end = f"<!-- load:{name} -->", f"<!-- /load:{name} -->"
        if start in old and end in old:
            kept[name] = old[old.index(start) : old.index(end) + len(end)]
    kept.update(sections)
    parts = [RESULTS_HEADER] + [kept[n] for n in LOADS if n in kept]
    # Sections recorded by hand (cluster mode, workers, throughput) follow this marker.
    manual = old.find(MANUAL_MARKER)
    if manual >= 0:
        parts.append(old[manual:].rstrip("\n"))
    RESULTS_MD.write_text("\n".join(parts) + "\n")


# ------------------------------------------------------------------ main


def gateway_exists() -> bool:
    """``python -m kichat serve`` needs both the composition root and the CLI."""
    return all(importlib.util.find_spec(m) is not None for m in ("kichat.app", "kichat.cli"))


def check_simulator(sim_cmd: str | None) -> None:
    if not sim_cmd and importlib.util.find_spec("kichat.sim.__main__") is None:
        raise BenchError(
            "the simulator does not exist yet (no kichat.sim.__main__); "
            "pass --sim-cmd to use another one"
        )


def available_targets(wanted: Sequence[str], opts: Options) -> Iterator[str]:
    for target in wanted:
        if target == "project" and not (opts.project_cmd or gateway_exists()):
            print(
                "SKIP project: the gateway does not exist yet (kichat.app, kichat.cli)", flush=True
            )
            continue
        if target == "peer" and opts.peer_dir is None:
            continue
        yield target


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument(
        "--load",
        action="append",
        choices=sorted(LOADS),
        help="load to run (repeatable); default: spread and bigroom",
    )
    p.add_argument("--targets", help="comma-separated subset of project,peer (default: the load's)")
    p.add_argument(
        "--peer-dir",
        type=Path,
        default=DEFAULT_PEER_DIR,
        help="the Node peer's source (copied to bench/build/peer, then npm ci)",
    )
    p.add_argument(
        "--sim-cmd", help="simulator command instead of `python -m kichat.sim`, with {port}"
    )
    p.add_argument(
        "--project-cmd",
        help="gateway command instead of project_command(), with {port} and {sim_port}",
    )
    for name, kind, what in (
        ("clients", int, "N"),
        ("rooms", int, "K"),
        ("rate", float, "R"),
        ("duration", float, "T"),
    ):
        p.add_argument(
            f"--{name}", type=kind, help=f"override the load's {what} (development runs)"
        )
    p.add_argument("--connect-rate", type=float, default=500.0, help="new connections per second")
    p.add_argument("--settle", type=float, default=1.0, help="seconds of quiet before RSS samples")
    p.add_argument(
        "--drain-quiet",
        type=float,
        default=2.0,
        help="after publishing, stop once nothing arrived and the server idled this long (s)",
    )
    p.add_argument("--drain-limit", type=float, default=60.0, help="longest drain, seconds")
    p.add_argument(
        "--cluster",
        action="store_true",
        help="run the project in cluster mode, on a private redis-server (measures the added hop)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes of the project (kichat serve --workers; implies --cluster)",
    )
    p.add_argument("--json", type=Path, help="write every figure to this JSON file")
    p.add_argument("--out", type=Path, help="logs and results.json here (default bench/out/DATE)")
    p.add_argument("--write-results", action="store_true", help="regenerate bench/RESULTS.md")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    changes = {k: getattr(args, k) for k in ("clients", "rooms", "rate", "duration")}
    changes = {k: v for k, v in changes.items() if v is not None}
    loads = [replace(LOADS[n], **changes) for n in (args.load or DEFAULT_LOADS)]
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    opts = Options(
        peer_dir=None,
        sim_cmd=args.sim_cmd,
        project_cmd=args.project_cmd,
        connect_rate=args.connect_rate,
        settle=args.settle,
        drain_quiet=args.drain_quiet,
        drain_limit=args.drain_limit,
        log_dir=args.out or OUT_DIR / stamp,
    )
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # like Ctrl-C: clean up, exit
    try:
        check_simulator(args.sim_cmd)
        opts.loadclient = build_loadclient()
        wanted = {t for load in loads for t in (args.targets or ",".join(load.targets)).split(",")}
        if "peer" in wanted:
            if (args.peer_dir / "relay.js").exists() and shutil.which("node"):
                opts.peer_dir = install_peer(args.peer_dir)
            else:
                print(f"SKIP peer: no node or no peer at {args.peer_dir}; project only", flush=True)
        raise_nofile(max(load.clients for load in loads))
        opts.workers = args.workers
        if not args.cluster and args.workers <= 1:
            return run_loads(loads, args, opts)
        redis, opts.redis_url = start_redis(opts.log_dir / "redis")
        opts.redis_pid = redis.pid
        try:
            return run_loads(loads, args, opts)
        finally:
            redis.kill()
            redis.wait()
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench: interrupted; every child process was stopped", file=sys.stderr)
        return 130


def run_loads(loads: list[Load], args: argparse.Namespace, opts: Options) -> int:
    command = shlex.join(["python", "bench/run.py", *sys.argv[1:]])
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    host = machine()
    results: dict[str, dict[str, dict[str, Any]]] = {}
    sections: dict[str, str] = {}
    for load in loads:
        targets = (args.targets or ",".join(load.targets)).split(",")
        unknown = set(targets) - set(TARGET_NAMES)
        if unknown:
            raise BenchError(f"unknown target(s): {', '.join(sorted(unknown))}")
        figs: dict[str, dict[str, Any]] = {}
        print(f"== {load.name}: {load.describe()}", flush=True)
        for target in available_targets(targets, opts):
            print(f"-- {target} ...", flush=True)
            figs[target] = run_target(target, load, opts)
        if not figs:
            raise BenchError("no target could run")
        print("\n".join(table(load, figs)), flush=True)
        for warning in warnings(figs):
            print(f"WARNING {warning}", flush=True)
        results[load.name] = figs
        sections[load.name] = section(load, figs, command, when, host)
    report = {"date": when, "machine": host, "command": command, "loads": results}
    opts.log_dir.mkdir(parents=True, exist_ok=True)
    (opts.log_dir / "results.json").write_text(json.dumps(report, indent=2))
    print(f"raw figures and logs: {opts.log_dir}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    if args.write_results:
        write_results(sections)
        print(f"wrote {RESULTS_MD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
