"""``kichat simulate`` / ``python -m kichat.sim``: run the Kick simulator until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from collections.abc import Coroutine
from typing import Any

from kichat.errors import KichatError
from kichat.sim.server import DEFAULT_APP_KEY, KickSimulator

log = logging.getLogger("kichat.sim")


def build_parser(prog: str = "kichat simulate") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="A local Kick stand-in: Pusher protocol 7 at /app/<key>, Kick's REST "
        "endpoints and a JSON control API under /_sim/, on one port.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    p.add_argument(
        "--port", type=int, default=7070, help="port, 0 for any free one (default %(default)s)"
    )
    p.add_argument("--key", default=DEFAULT_APP_KEY, help="Pusher app key (default Kick's)")
    p.add_argument("--rate", type=float, default=0.0, help="random events/s per channel (0: none)")
    p.add_argument(
        "--slugs", default=None, help="comma-separated channels for --rate (default all)"
    )
    p.add_argument(
        "--mix",
        default="realistic",
        choices=("realistic", "chat", "uniform"),
        help="which events --rate sends: realistic (Kick's measured mix, ~97%% chat), chat"
        " (chat messages only) or uniform (every event type equally; default %(default)s)",
    )
    p.add_argument(
        "--activity-timeout",
        type=float,
        default=120.0,
        metavar="S",
        help="the activity_timeout the Pusher handshake announces (default %(default)s s)",
    )
    p.add_argument(
        "--pong-timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="how long a client may take to answer the server's ping before it is closed"
        " (default %(default)s s)",
    )
    p.add_argument("--seed", type=int, default=None, help="seed for reproducible payloads")
    p.add_argument(
        "--log-level",
        default="info",
        type=str.lower,
        choices=("debug", "info", "warning", "error", "critical"),
        help="debug, info, warning, error or critical, any case (default %(default)s)",
    )
    return p


async def serve(args: argparse.Namespace) -> None:
    sim = KickSimulator(
        host=args.host,
        port=args.port,
        app_key=args.key,
        activity_timeout=args.activity_timeout,
        pong_timeout=args.pong_timeout,
        seed=args.seed,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with sim:
        if args.rate > 0:
            slugs = [s for s in args.slugs.split(",") if s] if args.slugs else None
            sim.start_traffic(args.rate, slugs, args.mix)
        await stop.wait()
        log.info("signal received, stopping")


def _run(main: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop  # noqa: PLC0415 (optional speed-up)
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        _run(serve(args))
    except KeyError as exc:
        problem = f"unknown channel {exc} (known: xqc, moonlitfox, chan<N>, added ones)"
    except (KichatError, OSError) as exc:
        problem = str(exc)
    else:
        return 0
    # One line, no traceback: these are configuration problems, not bugs.
    log.error("kick simulator: %s", problem)
    return 2
