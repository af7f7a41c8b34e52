"""Autobahn|Testsuite (the industry's WebSocket conformance suite) against kichat.http.

    make autobahn                                   # every case but permessage-deflate
    .venv/bin/python tests/autobahn/run.py --cases '6.*,7.*'
    .venv/bin/python tests/autobahn/run.py --write-results   # also update RESULTS.md

The suite (``wstest -m fuzzingclient``) runs on Python 2.7 only. On first use this script makes
a virtualenv for it in tests/autobahn/.venv27 with the 2.7 interpreter given by --python27
(default: $PYTHON27, else ~/.pyenv/versions/2.7.18/bin/python, else python2.7 on PATH),
installing virtualenv into that interpreter if it lacks it, then the pinned dependencies
(requirements-py27.txt) and autobahntestsuite. It starts tests/autobahn/echo_server.py on a
free port with this interpreter, runs the suite, writes the HTML/JSON report to
tests/autobahn/reports/ (ignored by git) and prints the count of cases per outcome. It exits
non-zero if any case is neither OK nor INFORMATIONAL.

Cases 12.* and 13.* (permessage-deflate) are excluded: kichat negotiates no extension, on
purpose (see kichat.http.websocket).
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
VENV = HERE / ".venv27"
REPORTS = HERE / "reports"
SUITE = "autobahntestsuite==25.10.1"
GOOD = {"OK", "INFORMATIONAL"}


def python27(given: str | None) -> str:
    candidates = [given, os.environ.get("PYTHON27"),
                  str(Path.home() / ".pyenv/versions/2.7.18/bin/python"), shutil.which("python2.7")]  # fmt: skip
    for candidate in candidates:
        if candidate and Path(candidate).exists():
            return candidate
    sys.exit("no Python 2.7 interpreter found: pass --python27 or set PYTHON27")


def run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def ensure_suite(py27: str) -> Path:
    wstest = VENV / "bin" / "wstest"
    if wstest.exists():
        return wstest
    probe = subprocess.run(
        [py27, "-m", "virtualenv", "--version"], check=False, capture_output=True
    )
    if probe.returncode != 0:
        run([py27, "-m", "pip", "install", "--quiet", "virtualenv<20.22"])  # last with 2.7
    run([py27, "-m", "virtualenv", str(VENV)])
    pip = str(VENV / "bin" / "pip")
    run([pip, "install", "--quiet", "-r", str(HERE / "requirements-py27.txt")])
    run([pip, "install", "--quiet", "--no-deps", SUITE])
    return wstest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(proc: subprocess.Popen[bytes], port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"the echo server exited with code {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit("the echo server did not start listening")


def versions(wstest: Path) -> dict[str, str]:
    pip = VENV / "bin" / "pip"
    frozen = subprocess.run(
        [str(pip), "freeze"], check=False, capture_output=True, text=True
    ).stdout
    wanted = {"autobahntestsuite", "autobahn", "twisted"}
    out = {line.split("==")[0].lower(): line.split("==")[1] for line in frozen.splitlines()
           if "==" in line and line.split("==")[0].lower() in wanted}  # fmt: skip
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                            check=False, capture_output=True, text=True).stdout.strip()  # fmt: skip
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "src"],
                           check=False, capture_output=True, text=True).stdout.strip()  # fmt: skip
    out["kichat"] = commit + (" (with uncommitted changes)" if dirty else "")
    out["python"] = sys.version.split()[0]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default="*", help="comma-separated case patterns")
    parser.add_argument("--exclude", default="12.*,13.*", help="comma-separated case patterns")
    parser.add_argument("--python27")
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    parser.add_argument("--write-results", action="store_true", help="update RESULTS.md")
    args = parser.parse_args()

    wstest = ensure_suite(python27(args.python27))
    port = free_port()
    echo = subprocess.Popen([sys.executable, str(HERE / "echo_server.py"), "--port", str(port),
                             "--loop", args.loop], stdout=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_listening(echo, port)
        if REPORTS.exists():
            shutil.rmtree(REPORTS)
        spec = {
            "outdir": str(REPORTS),
            "servers": [{"agent": "kichat", "url": f"ws://127.0.0.1:{port}"}],
            "cases": args.cases.split(","),
            "exclude-cases": [c for c in args.exclude.split(",") if c],
            "exclude-agent-cases": {},
        }
        with tempfile.TemporaryDirectory() as tmp:
            spec_file = Path(tmp) / "fuzzingclient.json"
            spec_file.write_text(json.dumps(spec))
            started = time.monotonic()
            proc = subprocess.run([str(wstest), "-m", "fuzzingclient", "-s", str(spec_file)],
                                  cwd=tmp, check=False, capture_output=True, text=True)  # fmt: skip
            elapsed = time.monotonic() - started
        if proc.returncode != 0:
            print(proc.stdout[-3000:], proc.stderr[-3000:])
            return proc.returncode
    finally:
        echo.terminate()
        echo.wait()

    results = json.loads((REPORTS / "index.json").read_text())["kichat"]
    summary = Summary(results, elapsed)
    print(f"{len(results)} cases in {elapsed:.0f} s: {summary.counts('behavior')}")
    print(f"closing behaviour: {summary.counts('behaviorClose')}")
    print(f"slowest: {summary.slowest()}")
    for case in summary.bad:
        print(f"  {case}: {results[case]['behavior']} / {results[case]['behaviorClose']}")
    print(f"report: {REPORTS / 'index.html'}")
    if args.write_results:
        (HERE / "RESULTS.md").write_text(summary.markdown(args, versions(wstest)))
    return 1 if summary.bad else 0


class Summary:
    def __init__(self, results: dict[str, dict[str, Any]], elapsed: float) -> None:
        self.results = results
        self.elapsed = elapsed
        self.bad = sorted((case for case, r in results.items()
                           if r["behavior"] not in GOOD or r["behaviorClose"] not in GOOD),
                          key=case_key)  # fmt: skip

    def counts(self, field: str, group: str | None = None) -> str:
        found = collections.Counter(
            r[field] for case, r in self.results.items()
            if group is None or case.split(".")[0] == group
        )  # fmt: skip
        return ", ".join(f"{n} {b}" for b, n in found.most_common())

    def slowest(self, n: int = 5) -> str:
        ranked = sorted(self.results.items(), key=lambda kv: -kv[1]["duration"])[:n]
        return ", ".join(f"{case} {r['duration']} ms" for case, r in ranked)

    def markdown(self, args: argparse.Namespace, found: dict[str, str]) -> str:
        groups = sorted({case.split(".")[0] for case in self.results}, key=int)
        lines = [
            "# Autobahn|Testsuite results",
            "",
            "Generated by `tests/autobahn/run.py --write-results` (what `make autobahn` runs,",
            "plus this file). The HTML report it also writes (tests/autobahn/reports/) is not",
            "committed.",
            "",
            f"- date: {dt.date.today().isoformat()}",
            f"- command: `.venv/bin/python tests/autobahn/run.py --cases '{args.cases}' "
            f"--exclude '{args.exclude}' --loop {args.loop} --write-results`",
            f"- endpoint: tests/autobahn/echo_server.py (kichat.http on {args.loop}), kichat "
            f"{found.get('kichat', '?')}, Python {found.get('python', '?')}",
            f"- suite: autobahntestsuite {found.get('autobahntestsuite', '?')}, autobahn "
            f"{found.get('autobahn', '?')}, Twisted {found.get('twisted', '?')}, on Python 2.7",
            f"- {len(self.results)} cases in {self.elapsed:.0f} s; the permessage-deflate cases "
            "(12.*, 13.*) are excluded: kichat negotiates no extension",
            "",
            f"**Summary: {self.counts('behavior')}** (closing behaviour: "
            f"{self.counts('behaviorClose')})",
            "",
            "| group | cases | outcome |",
            "|---|---|---|",
        ]
        for group in groups:
            size = sum(1 for case in self.results if case.split(".")[0] == group)
            lines.append(f"| {group}.* | {size} | {self.counts('behavior', group)} |")
        lines += [
            "",
            "Slowest cases (the performance cases 9.* send messages of up to 16 MiB, some in",
            f"64-byte frames or 64-byte chops): {self.slowest()}.",
            "",
        ]
        if self.bad:
            lines += ["Cases not OK:", ""]
            lines += [f"- {c}: {self.results[c]['behavior']} / {self.results[c]['behaviorClose']}"
                      for c in self.bad]  # fmt: skip
            lines.append("")
        return "\n".join(lines)


def case_key(case: str) -> list[int]:
    return [int(p) for p in case.split(".")]


if __name__ == "__main__":
    sys.exit(main())
