"""Soak run: the gateway for many minutes under churn and upstream faults. Not part of CI.

    python bench/soak.py --minutes 15              # the recorded soak; writes bench/SOAK.md
    python bench/soak.py --minutes 2 --no-write    # a short trial: prints the report only

One gateway (``python -m kichat serve``) on the Kick simulator (``python -m kichat.sim``), both
child processes. The simulator's bench traffic publishes numbered chat messages on every
chatroom for the whole run. Against it:

* ``--clients`` raw Socket.IO clients (bench/soakclient.py, one asyncio process) that churn:
  switch chatrooms (unsubscribe, subscribe), have network blips (the TCP connection dies, the
  client is back within 3 s and recovers its session), leave and come back as new clients;
* ``--node-clients`` real socket.io-client clients (tests/js/soak_clients.mjs) whose transport
  is destroyed now and then, recovering through socket.io-client's own connection state recovery;
* ``--slow-readers`` clients subscribed to every chatroom that stop reading for seconds at a time;
* every ``--fault-every`` seconds an upstream fault injected through the simulator (close codes,
  a TCP drop, refused reconnects, a hung Pusher that stops answering).

Measured: messages lost by healthy clients (every client but the slow readers), duplicates,
failed recoveries, the gateway's RSS over time (growth after the warm-up), tracebacks and
errors in its log. See bench/README.md ("Soak") for how each figure is defined.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import random
import resource
import shutil
import signal
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import (
    BENCH_DIR,
    REPO_DIR,
    BenchError,
    Children,
    Sim,
    flags,
    free_port,
    gateway_stats,
    raise_nofile,
    tree_cpu_seconds,
    tree_rss_kib,
    wait_listening,
)
from run import project_command
from soakclient import ROOM_BASE, Client, Period, Swarm, losses

SOAK_MD = BENCH_DIR / "SOAK.md"
NODE_CLIENTS = REPO_DIR / "tests" / "js" / "soak_clients.mjs"

# Settings that differ from the defaults, and why.
GATEWAY_ENV = {
    # Every soak client comes from 127.0.0.1 and subscribes often: the per-address limits (on
    # live, pending and detached sessions; 10 each by default) would count 2,000 users as one.
    # With the default detached budget, sessions of blips beyond 10 at a time are ended early
    # (kichat_detached_evicted_total), which is that limit working, not a recovery failing.
    "KICHAT_LIMITS_CONNECTIONS_PER_IP": "1000000",
    "KICHAT_LIMITS_PENDING_CONNECTIONS_PER_IP": "1000000",
    "KICHAT_LIMITS_DETACHED_PER_IP": "1000000",
    "KICHAT_LIMITS_SUBSCRIBE_RATE": "1000",
    # Small buffers, so that a slow reader is cut off within the run instead of after an hour.
    "KICHAT_SOCKETIO_OUTBOUND_BUFFER_LIMIT": str(256 * 1024),
    "KICHAT_SERVER_SOCKET_SEND_BUFFER": str(64 * 1024),
    # A hung upstream is detected in ~15 s (the simulator announces activity_timeout 10 s).
    "KICHAT_PUSHER_PONG_TIMEOUT": "5",
}

# The upstream faults, in turn, one every --fault-every seconds: (name, control API calls,
# seconds after which the fault is cleared, or None).
FAULTS: list[tuple[str, list[dict[str, Any]], float | None]] = [
    ("close 4200 (reconnect now)", [{"kind": "close", "code": 4200}], None),
    ("TCP drop", [{"kind": "drop"}], None),
    ("close 4100 (over capacity: back off)", [{"kind": "close", "code": 4100}], None),
    (
        "TCP drop, then 2 reconnects refused (4100)",
        [{"kind": "refuse", "count": 2, "code": 4100}, {"kind": "drop"}],
        None,
    ),
    (
        "hung Pusher (nothing sent, pings unanswered) for 25 s",
        [{"kind": "ignore_pings", "enabled": True, "new_connections": False}],
        25.0,
    ),
    ("close 1011 (server error)", [{"kind": "close", "code": 1011}], None),
]


@dataclass
class Run:
    args: argparse.Namespace
    started: float = 0.0
    rss: list[tuple[float, int, int]] = field(default_factory=list)  # (t, KiB, clients)
    faults: list[tuple[float, int, str]] = field(default_factory=list)  # (t, wall ns, name)
    node_report: dict[str, Any] = field(default_factory=dict)
    cores: dict[str, float] = field(default_factory=dict)  # average cores used, by process


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    p.add_argument("--minutes", type=float, default=15.0, help="length of the run (default 15)")
    p.add_argument("--clients", type=int, default=2000, help="raw churning clients")
    p.add_argument("--node-clients", type=int, default=50, help="socket.io-client clients")
    p.add_argument("--slow-readers", type=int, default=5)
    p.add_argument("--rooms", type=int, default=40, help="chatrooms")
    p.add_argument("--rate", type=float, default=1.0, help="messages/s per chatroom")
    p.add_argument("--churn", type=float, default=60.0, help="mean s between a client's actions")
    p.add_argument("--fault-every", type=float, default=60.0, help="s between upstream faults")
    p.add_argument(
        "--warmup",
        type=float,
        default=None,
        help="s before the RSS baseline (default 3 min, half of a run under 6 min: the recovery"
        " log fills for socketio.recovery_window, 2 min, first)",
    )
    p.add_argument("--connect-rate", type=float, default=200.0, help="new clients/s at start")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", type=Path, default=None, help="logs (default bench/out/soak-<date>)")
    p.add_argument("--no-write", action="store_true", help="print the report, no bench/SOAK.md")
    args = p.parse_args(argv)
    if args.warmup is None:
        args.warmup = 180.0 if args.minutes >= 6 else args.minutes * 30
    return args


async def soak(run: Run, children: Children) -> dict[str, Any]:
    args = run.args
    loop = asyncio.get_running_loop()
    sim_port, port = free_port(), free_port()
    sim_proc = children.start("sim", [
        sys.executable, "-m", "kichat.sim", *flags(port=sim_port, activity_timeout=10),
    ])  # fmt: skip
    wait_listening(sim_proc, sim_port, "simulator", 30)
    sim = Sim(sim_port)
    gateway = children.start("gateway", project_command(port, sim_port), env=GATEWAY_ENV)
    wait_listening(gateway, port, "gateway", 30)
    duration = args.minutes * 60
    room_ids = [ROOM_BASE + r for r in range(args.rooms)]
    await asyncio.to_thread(sim.start_bench, room_ids, args.rate, duration + 120)
    bench_started_ns = (await asyncio.to_thread(sim.bench))["started_at_ns"]

    cpu0 = {"gateway": tree_cpu_seconds(gateway.pid), "simulator": tree_cpu_seconds(sim_proc.pid)}
    cpu0["clients"] = own_cpu_seconds()
    rng = random.Random(args.seed)
    swarm = Swarm("127.0.0.1", port, args.rooms, rng)
    run.started = loop.time()
    until = run.started + duration
    node = None
    if (
        args.node_clients
        and shutil.which("node")
        and NODE_CLIENTS.parent.joinpath("node_modules", "socket.io-client").is_dir()
    ):
        node = await asyncio.create_subprocess_exec(
            shutil.which("node") or "node", str(NODE_CLIENTS), f"http://127.0.0.1:{port}",
            str(args.node_clients), str(args.rooms), str(args.churn), str(args.seed),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            limit=64 * 1024 * 1024,  # its final report is one JSON line, long after 15 minutes
        )  # fmt: skip
    for i in range(args.clients + args.slow_readers):
        client = Client(swarm, slow=i >= args.clients)
        swarm.clients.append(client)
        life = (
            swarm.slow_life(client, until) if client.slow else swarm.life(client, args.churn, until)
        )
        swarm.spawn(life)
        await asyncio.sleep(1 / args.connect_rate)
    sampler = asyncio.ensure_future(sample(run, gateway.pid, swarm, until))
    faults = asyncio.ensure_future(inject_faults(run, sim, until))
    while loop.time() < until:
        await asyncio.sleep(min(10.0, until - loop.time()))
        print_progress(run, swarm, loop.time())
    # The end: no more churn; let the last messages arrive, then stop the traffic.
    swarm.stopping = True
    await asyncio.sleep(3.0)
    wall = loop.time() - run.started
    run.cores = {
        "gateway": (tree_cpu_seconds(gateway.pid) - cpu0["gateway"]) / wall,
        "simulator": (tree_cpu_seconds(sim_proc.pid) - cpu0["simulator"]) / wall,
        "raw clients": (own_cpu_seconds() - cpu0["clients"]) / wall,
    }
    if node is not None:
        run.cores["socket.io-client clients"] = tree_cpu_seconds(node.pid) / wall
    published = {int(k): v for k, v in (await asyncio.to_thread(sim.bench))["published"].items()}
    await asyncio.to_thread(sim._call, "DELETE", "/_sim/bench")
    await asyncio.sleep(2.0)
    if node is not None:
        run.node_report = await node_report(node)
    faults.cancel()
    sampler.cancel()
    stats = await asyncio.to_thread(gateway_stats, port)
    # The drain at scale: SIGTERM with every client still connected.
    connected = swarm.connected_count()
    closes_before = Counter(swarm.stats.server_close_codes)
    sigterm_at = loop.time()
    gateway.send_signal(signal.SIGTERM)
    code = await asyncio.to_thread(gateway.wait, 60)
    drain = {"clients": connected, "exit_code": code, "seconds": loop.time() - sigterm_at}
    await asyncio.sleep(1.0)  # the last close frames
    drain["close_codes"] = dict(swarm.stats.server_close_codes - closes_before)
    await swarm.close()
    return {
        "swarm": swarm, "published": published, "bench_started_ns": bench_started_ns,
        "gateway_stats": stats, "gateway_log": children.log_dir / "gateway.log", "drain": drain,
    }  # fmt: skip


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def sample(run: Run, pid: int, swarm: Swarm, until: float) -> None:
    loop = asyncio.get_running_loop()
    while loop.time() < until + 5:
        run.rss.append((loop.time() - run.started, tree_rss_kib(pid), swarm.connected_count()))
        await asyncio.sleep(5.0)


async def inject_faults(run: Run, sim: Sim, until: float) -> None:
    loop = asyncio.get_running_loop()
    n = 0
    while True:
        await asyncio.sleep(run.args.fault_every)
        if loop.time() >= until:
            return
        name, calls, clear_after = FAULTS[n % len(FAULTS)]
        n += 1
        run.faults.append((loop.time() - run.started, time.time_ns(), name))
        for body in calls:
            await asyncio.to_thread(sim._call, "POST", "/_sim/fault", body)
        if clear_after is not None:
            await asyncio.sleep(clear_after)
            await asyncio.to_thread(sim._call, "POST", "/_sim/fault", {"kind": "clear"})
            off = {"kind": "ignore_pings", "enabled": False}
            await asyncio.to_thread(sim._call, "POST", "/_sim/fault", off)


async def node_report(node: asyncio.subprocess.Process) -> dict[str, Any]:
    assert node.stdin is not None and node.stdout is not None
    node.stdin.write(b'{"cmd":"report"}\n')
    report: dict[str, Any] = {}
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(30):
            while line := await node.stdout.readline():
                msg = json.loads(line)
                if msg.get("ev") == "report":
                    report = msg
                    break
    node.stdin.write(b'{"cmd":"stop"}\n')
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(node.wait(), 10)
    if node.returncode is None:
        node.kill()
    return report


def print_progress(run: Run, swarm: Swarm, now: float) -> None:
    s = swarm.stats
    rss = run.rss[-1][1] / 1024 if run.rss else 0.0
    print(
        f"{now - run.started:6.0f} s  clients {swarm.connected_count():5d}  events {s.events:9d}"
        f"  drops {s.drops:5d}  recovered {s.recovered:5d}  leaves {s.disconnects:5d}"
        f"  faults {len(run.faults):3d}  gateway RSS {rss:6.1f} MiB",
        flush=True,
    )


# ------------------------------------------------------------------ figures and the report


def figures(run: Run, result: dict[str, Any]) -> dict[str, Any]:
    swarm: Swarm = result["swarm"]
    periods = list(swarm.finished)
    for p in run.node_report.get("periods", []):
        period = Period(int(p["room"]), healthy=True)
        period.seqs.extend(int(s) for s in p["seqs"])
        period.dups = int(p["dups"])
        periods.append(period)
    acc = losses(periods)
    union_sets: dict[int, set[int]] = acc.pop("union_sets")
    never = nobody_received(run, result, union_sets)
    log = result["gateway_log"].read_text(errors="replace").splitlines()
    warmup = run.args.warmup
    after = [kib for t, kib, _ in run.rss if t >= warmup]
    base = statistics.median([kib for t, kib, _ in run.rss if warmup <= t < warmup + 60] or after)
    last = statistics.median([kib for t, kib, _ in run.rss if t >= run.rss[-1][0] - 60])
    s = swarm.stats
    return {
        "losses": acc,
        "nobody_received": never,
        "rss_baseline_kib": base,
        "rss_last_kib": last,
        "rss_growth_pct": 100.0 * (last - base) / base if base else 0.0,
        "rss_max_after_warmup_kib": max(after) if after else 0,
        "tracebacks": sum("Traceback" in line for line in log),
        "errors": sum(" ERROR " in line for line in log),
        "warnings": sum(" WARNING " in line for line in log),
        "warning_kinds": warning_kinds(log),
        "swarm": {k: (dict(v) if isinstance(v, dict) else v) for k, v in vars(s).items()},
        "node": {k: run.node_report.get(k) for k in ("blips", "recovered", "not_recovered")},
        "gateway": {
            "sio": result["gateway_stats"].get("sio", {}),
            "upstream_reconnects": result["gateway_stats"].get("upstream", {}).get("reconnects"),
        },
        "published": sum(result["published"].values()),
        "drain": result["drain"],
    }


def nobody_received(run: Run, result: dict[str, Any], union: dict[int, set[int]]) -> dict[str, int]:
    """Messages no client got, between the first and the last any client of the chatroom got.
    The simulator publishes to whoever is subscribed upstream: while the gateway reconnects,
    Kick's messages go nowhere (Pusher does not replay), so these are expected inside a fault's
    window; outside one, they would be the gateway's loss."""
    rate, rooms = run.args.rate, run.args.rooms
    start_ns = result["bench_started_ns"]
    windows = [
        (at_ns - 1e9, at_ns + (40e9 if "hung" in name else 15e9)) for _, at_ns, name in run.faults
    ]
    inside = outside = 0
    for r, got in union.items():
        for seq in range(min(got), max(got) + 1):
            if seq in got:
                continue
            # The simulator's schedule: tick (seq - 1) * rooms + r, 1 / (rooms * rate) s apart.
            at_ns = start_ns + 1e9 * ((seq - 1) * rooms + r) / (rooms * rate)
            if any(a <= at_ns <= b for a, b in windows):
                inside += 1
            else:
                outside += 1
    return {"in_fault_windows": inside, "outside_fault_windows": outside}


def warning_kinds(log: list[str]) -> dict[str, int]:
    kinds: dict[str, int] = {}
    for line in log:
        if " WARNING " in line:
            text = line.split(" WARNING ", 1)[1].split(":", 2)[-1].strip()
            key = " ".join(text.split()[:6])
            kinds[key] = kinds.get(key, 0) + 1
    return dict(sorted(kinds.items(), key=lambda kv: -kv[1])[:8])


def verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"


def report(run: Run, figs: dict[str, Any], command: str, when: str, host: str) -> str:
    a = run.args
    acc, sw, node, never = figs["losses"], figs["swarm"], figs["node"], figs["nobody_received"]
    drain = figs["drain"]
    sio = figs["gateway"]["sio"]
    fails = sw["recovery_failed"] + (node.get("not_recovered") or 0)
    lines = [
        "# Soak run",
        "",
        f"`{command}`, {when}, on {host}. Gateway and simulator as child processes, clients in "
        "this process and one Node.js process; other people's work shared the machine.",
        "",
        f"Load: {a.clients} raw clients churning (a mean of {a.churn:g} s between a client's "
        f"actions: chatroom switch, network blip, leave and come back), {a.node_clients} "
        f"socket.io-client clients with transport blips, {a.slow_readers} slow readers on every "
        f"chatroom; {a.rooms} chatrooms at {a.rate:g} numbered message/s each; an upstream fault "
        f"every {a.fault_every:g} s; {a.minutes:g} minutes (RSS baseline after {a.warmup:g} s). "
        "Average CPU: "
        + ", ".join(f"{name} {cores:.2f} cores" for name, cores in run.cores.items())
        + ".",
        "",
        "| figure | target | result | |",
        "|---|---|---|---|",
        f"| messages lost by healthy clients | 0 | {acc['lost']} of {acc['messages']:,} received"
        f" ({acc['periods_with_loss']} of {acc['periods']:,} subscriptions) | "
        f"{verdict(acc['lost'] == 0)} |",
        f"| duplicates | 0 | {acc['dups']} | {verdict(acc['dups'] == 0)} |",
        f"| failed session recoveries | 0 | {fails} (raw {sw['recovery_failed']}, "
        f"socket.io-client {node.get('not_recovered')}) | {verdict(fails == 0)} |",
        f"| gateway RSS growth after warm-up | ≤ 5 % | {figs['rss_growth_pct']:+.1f} % "
        f"({figs['rss_baseline_kib'] / 1024:.1f} → {figs['rss_last_kib'] / 1024:.1f} MiB) | "
        f"{verdict(figs['rss_growth_pct'] <= 5.0)} |",
        f"| tracebacks in the gateway's log | 0 | {figs['tracebacks']} | "
        f"{verdict(figs['tracebacks'] == 0)} |",
        f"| ERROR lines in the gateway's log | | {figs['errors']} | |",
        f"| drain on SIGTERM at the end | exit 0 within `server.shutdown_timeout` (10 s) | exit "
        f"{drain['exit_code']} after {drain['seconds']:.1f} s, {drain['clients']:,} clients "
        f"connected; close frames they got: {json.dumps(drain['close_codes'])} | "
        f"{verdict(drain['exit_code'] == 0 and drain['seconds'] <= 10.0)} |",
        "",
        f"Messages nobody received (Kick's messages published while the gateway was reconnecting "
        f"go nowhere; Pusher does not replay): {never['in_fault_windows']} inside fault windows, "
        f"{never['outside_fault_windows']} outside. Published: {figs['published']:,}.",
        "",
        "Churn and faults: "
        f"{sw['connects']:,} connections ({sw['fresh_sessions']:,} new sessions), "
        f"{sw['disconnects']:,} clean disconnects, {sw['drops']:,} raw blips "
        f"({sw['recovered']:,} recovered), {node.get('blips')} socket.io-client blips "
        f"({node.get('recovered')} recovered), {sum(sw['subscribes'].values()):,} subscribes "
        f"({json.dumps(sw['subscribes'])}), {sw['unsubscribes']:,} unsubscribes, "
        f"{sw['unexpected_closes']} closes by the server (slow readers cut off: "
        f"{sio.get('slow_clients')}), {sw['connect_failures']} failed connects, "
        f"{sw['strays']} events after an acknowledged unsubscribe; upstream reconnects by cause: "
        f"{json.dumps(figs['gateway']['upstream_reconnects'])}.",
        "",
        "Upstream faults injected: "
        + "; ".join(f"{t:.0f} s {name}" for t, _, name in run.faults)
        + ".",
        "",
        "Gateway RSS over time (median of the samples in each minute, 5 s apart):",
        "",
        "| minute | RSS MiB | clients connected |",
        "|---|---|---|",
    ]
    minutes: dict[int, list[tuple[int, int]]] = {}
    for t, kib, clients in run.rss:
        minutes.setdefault(int(t // 60), []).append((kib, clients))
    for m, rows in sorted(minutes.items()):
        rss = statistics.median(k for k, _ in rows) / 1024
        lines.append(f"| {m} | {rss:.1f} | {statistics.median(c for _, c in rows):.0f} |")
    lines += ["", "WARNING lines in the gateway's log, by kind (the first words):", ""]
    lines += [f"- {n} x `{kind}`" for kind, n in figs["warning_kinds"].items()] or ["- none"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    when = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    out = args.out or BENCH_DIR / "out" / f"soak-{dt.datetime.now():%Y%m%d-%H%M%S}"
    command = "python bench/soak.py " + " ".join(argv if argv is not None else sys.argv[1:])
    load = os.getloadavg()
    host = f"{platform.node()}, {os.cpu_count()} cores, load average {load[0]:.1f} at the start"
    raise_nofile(args.clients + args.node_clients + args.slow_readers + 256)
    children = Children(out)
    run = Run(args)
    try:
        with contextlib.suppress(ImportError):
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        result = asyncio.run(soak(run, children))
    except BenchError as exc:
        print(f"soak: {exc}", file=sys.stderr)
        return 2
    finally:
        children.stop_all()
    figs = figures(run, result)
    text = report(run, figs, command.strip(), when, host)
    (out / "figures.json").write_text(json.dumps(figs, indent=2, default=str))
    print(text)
    if not args.no_write:
        SOAK_MD.write_text(text)
        print(f"wrote {SOAK_MD}")
    print(f"logs: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
