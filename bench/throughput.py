"""The highest delivery rate a server sustains: 100 % delivered and p99 under a bound.

    python bench/throughput.py                       # project --workers 1, --workers 2, peer
    python bench/throughput.py --targets w2 --rates 20,30,40 --p99 250

Runs ``bench/run.py`` on the big-room shape (``--clients`` clients in one chatroom) at rising
per-chatroom rates, for each target, and stops a target at its first failing rate. A rate
passes when every expected message was delivered, with no gap, and p99 latency is under
``--p99`` ms. Prints a table (and writes JSON with --json) of the highest passing deliveries/s.
Each step is one run of run.py (about a minute): run on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
TARGETS = {
    "w1": ("project", []),
    "w2": ("project", ["--workers", "2"]),
    "peer": ("peer", []),
}


def run(target: str, clients: int, rate: float, duration: float) -> dict[str, Any]:
    name, extra = TARGETS[target]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "fig.json"
        cmd = [sys.executable, str(BENCH / "run.py"), "--load", "bigroom", "--targets", name,
               "--clients", str(clients), "--rate", str(rate), "--duration", str(duration),
               "--json", str(out), *extra]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0 or not out.exists():
            return {"error": proc.stderr[-500:] or proc.stdout[-500:]}
        fig: dict[str, Any] = json.loads(out.read_text())["loads"]["bigroom"][name]
        return fig


def passes(fig: dict[str, Any], p99_limit: float) -> bool:
    return (
        "error" not in fig
        and fig["delivered"] == fig["expected"]
        and fig["gaps"] == 0
        and float(fig["latency_ms"]["p99"]) < p99_limit
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--targets", default="w1,w2,peer", help="comma-separated: w1, w2, peer")
    p.add_argument("--clients", type=int, default=5000)
    p.add_argument("--rates", default="20,30,40,50,60,80,100", help="per-chatroom rates, rising")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--p99", type=float, default=250.0, help="p99 bound, ms")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    results: dict[str, Any] = {}
    for target in args.targets.split(","):
        best = None
        steps = []
        for rate in rates:
            fig = run(target, args.clients, rate, args.duration)
            ok = passes(fig, args.p99)
            step = {
                "rate": rate,
                "deliveries_per_s": args.clients * rate,
                "passed": ok,
                "p99_ms": fig.get("latency_ms", {}).get("p99"),
                "delivered_pct": fig.get("delivered_pct"),
                "server_cpu_us_per_delivery": fig.get("server_cpu_us_per_delivery"),
                "server_cores": fig.get("server_cores"),
                "error": fig.get("error"),
            }
            steps.append(step)
            print(f"{target} rate {rate:g}/s ({args.clients * rate:,.0f} deliveries/s): "
                  f"{'pass' if ok else 'FAIL'} p99 {step['p99_ms']} ms, "
                  f"delivered {step['delivered_pct']}", flush=True)  # fmt: skip
            if not ok:
                break
            best = step
        results[target] = {"best": best, "steps": steps}
    print("\n| target | highest passing deliveries/s | p99 (ms) | CPU/delivery (µs) |")
    print("|---|---|---|---|")
    for target, r in results.items():
        b = r["best"]
        if b is None:
            print(f"| {target} | none passed | | |")
        else:
            cpu = b["server_cpu_us_per_delivery"]
            print(f"| {target} | {b['deliveries_per_s']:,.0f} | {b['p99_ms']} | "
                  f"{cpu:.2f} |" if cpu is not None else "| n/a |")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
