"""kichat: a self-hostable gateway that turns kick.com's live chat into a Socket.IO v4 stream.

::

    kichat serve        run the gateway (default 127.0.0.1:3000, upstream: real Kick)
    kichat demo         the gateway on the built-in Kick simulator, live chat in the terminal
    kichat simulate     the Kick simulator alone (for tests, benchmarks, your own experiments)
    kichat check-config print every configuration problem at once (or the settings list)
    kichat watch        print a chatroom's live events from a running gateway
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import logging
import os
import shutil
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from websockets.exceptions import WebSocketException

from kichat import __version__
from kichat.app import App, fingerprint, serve
from kichat.config import (
    Settings,
    load_settings,
    render_settings_markdown,
    render_settings_text,
    settings_for_display,
)
from kichat.errors import ConfigError, KichatError
from kichat.observability import configure_logging
from kichat.sim import KickSimulator
from kichat.sim.cli import main as simulate_main
from kichat.watch import watch
from kichat.workers import WorkerSpec, follow_supervisor, supervise, worker_count

DEMO_CHANNELS = (("xqc", "668"), ("moonlitfox", "4100123"))


def _settings_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="TOML configuration file (or KICHAT_CONFIG)")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", help="port to listen on (default 3000)")
    p.add_argument("--pusher-url", help="Kick's Pusher URL (default: real Kick)")
    p.add_argument("--kick-api-url", help="Kick's REST base URL (default: https://kick.com)")
    p.add_argument("--log-level", help="debug, info, warning, error")
    p.add_argument("--log-format", help="text or json")
    p.add_argument("--redis-url", help="cluster mode: the Redis every node shares")
    p.add_argument(
        "--workers", help="worker processes (a number or auto; more than 1 needs --redis-url)"
    )
    p.add_argument("--node-id", help="cluster mode: this node's id (a-z 0-9, unique)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="any setting by its dotted name, e.g. --set limits.rest_per_minute=300",
    )


def _overrides(args: argparse.Namespace) -> dict[str, object]:
    flags: dict[str, object] = {
        "server.host": args.host,
        "server.port": args.port,
        "pusher.url": args.pusher_url,
        "kick_api.url": args.kick_api_url,
        "log.level": args.log_level,
        "log.format": args.log_format,
        "cluster.redis_url": args.redis_url,
        "server.workers": getattr(args, "workers", None),
        "cluster.node_id": args.node_id,
    }
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep:
            raise ConfigError([f"command line: --set expects NAME=VALUE, got {item!r}"])
        flags[name.strip()] = value
    return flags


def _load(args: argparse.Namespace, **forced: object) -> Settings:
    return load_settings({**_overrides(args), **forced}, config_path=args.config)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kichat",
        description=__doc__.splitlines()[0] if __doc__ else "",
        epilog="`kichat COMMAND --help` describes each command.",
    )
    p.add_argument("--version", action="version", version=f"kichat {__version__}")
    # Not required here: main() says a command is missing only once the options are known good,
    # so that `kichat --bogus` hears about --bogus.
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the gateway")
    _settings_arguments(serve)

    demo = sub.add_parser("demo", help="run the gateway on the built-in Kick simulator")
    _settings_arguments(demo)
    demo.add_argument("--rate", type=float, default=2.0, help="simulated events/s per channel")
    demo.add_argument("--quiet", action="store_true", help="do not print the chat")

    sub.add_parser("simulate", help="run the Kick simulator alone", add_help=False)

    check = sub.add_parser("check-config", help="validate the configuration")
    _settings_arguments(check)
    check.add_argument("--list", action="store_true", help="list every setting and exit")
    check.add_argument("--markdown", action="store_true", help="with --list: a Markdown table")

    watch = sub.add_parser("watch", help="print a chatroom's live events from a gateway")
    watch.add_argument("url", help="the gateway, e.g. http://127.0.0.1:3000 (or 127.0.0.1:3000)")
    watch.add_argument("channel_name", help="a Kick channel slug, e.g. xqc")
    watch.add_argument("chatroom_id", help="its chatroom id, e.g. 668")
    watch.add_argument("--token", help="API key, if the gateway requires one")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["simulate"]:
        return simulate_main(argv[1:])
    args = _parse(build_parser(), argv)
    try:
        if args.command == "check-config":
            return _check_config(args)
        if args.command == "watch":
            configure_logging("warning")
            return _run(lambda stop: _watch(args, stop))
        settings = _load(args)
        worker = WorkerSpec.from_env()
        configure_logging(settings.log.level, settings.log.format, worker.node_id if worker else "")
        if args.command == "serve":
            if worker is None and worker_count(settings.server.workers) > 1:
                return supervise(settings, argv)
            if worker is not None:
                follow_supervisor(worker)
            return _run(lambda stop: _serve(settings, stop), settings.server.use_uvloop)
        return _run(lambda stop: _demo(args, settings, stop), settings.server.use_uvloop)
    except ConfigError as exc:
        print("configuration problems:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  - {problem}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader of stdout went away (`kichat watch ... | head`): nothing to report. Point
        # stdout at /dev/null so that the interpreter's final flush does not complain either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE or args.command not in ("serve", "demo"):
            print(f"kichat {args.command}: {exc}", file=sys.stderr)
        else:
            print(f"kichat {args.command}: {_address_in_use(args)}", file=sys.stderr)
        return 2
    except (KichatError, WebSocketException) as exc:
        # A busy port, an unreachable or refusing gateway: the operator's to fix, not a bug,
        # so one line and no traceback.
        print(f"kichat {args.command}: {exc}", file=sys.stderr)
        return 2


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse ``argv``; a mistake is reported by the parser of the command it belongs to, with
    that command's usage (argparse's own parse_args reports it with the top-level usage)."""
    args, extra = parser.parse_known_args(argv)
    command = _subparser(parser, args.command)
    if extra:
        (command or parser).error(f"unrecognized arguments: {' '.join(extra)}")
    if command is None:
        parser.error("a command is required: serve, demo, simulate, check-config or watch")
    return args


def _subparser(parser: argparse.ArgumentParser, name: str | None) -> argparse.ArgumentParser | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and name is not None:
            found: argparse.ArgumentParser | None = action.choices.get(name)
            return found
    return None


def _address_in_use(args: argparse.Namespace) -> str:
    server = _load(args).server
    return (
        f"{server.host}:{server.port} is already in use (another kichat, or another program);"
        f" choose another port with --port, e.g. --port {server.port + 1}"
    )


def _check_config(args: argparse.Namespace) -> int:
    if args.list:
        print(render_settings_markdown() if args.markdown else render_settings_text(), end="")
        return 0
    settings = _load(args)
    print(json.dumps(settings_for_display(settings), indent=2, default=str))
    if settings.cluster.redis_url:
        # Reachable, and agreeing with the nodes already there: a setting can be right and the
        # cluster still unusable.
        from kichat.broker.redis import check_redis  # noqa: PLC0415  (cluster mode only)

        c = settings.cluster
        line = asyncio.run(
            check_redis(c.redis_url, prefix=c.key_prefix, fingerprint=fingerprint(settings),
                        command_timeout=c.command_timeout)
        )  # fmt: skip
        print(f"cluster: {line}", file=sys.stderr)
    print("configuration OK", file=sys.stderr)
    return 0


def _run(
    main: Callable[[asyncio.Event], Coroutine[Any, Any, None]], use_uvloop: bool = True
) -> int:
    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        await main(stop)

    if use_uvloop:
        with contextlib.suppress(ImportError):
            import uvloop  # noqa: PLC0415  (optional: absent on Windows)

            uvloop.run(runner())
            return 0
    asyncio.run(runner())
    return 0


async def _serve(settings: Settings, stop: asyncio.Event) -> None:
    await serve(settings, stop)


async def _watch(args: argparse.Namespace, stop: asyncio.Event) -> None:
    await watch(args.url, args.channel_name, args.chatroom_id, token=args.token, stop=stop)


async def _demo(args: argparse.Namespace, base: Settings, stop: asyncio.Event) -> None:
    """The gateway with the simulator as its upstream, and a terminal client watching it."""
    if base.log.level == "info":
        # The banner says where the simulator is; its own start/stop lines would only bury a
        # real message (a busy port) under noise.
        logging.getLogger("kichat.sim").setLevel(logging.WARNING)
    async with KickSimulator(port=0) as sim:
        settings = load_settings(
            {**_overrides(args), "pusher.url": sim.pusher_url, "kick_api.url": sim.api_url},
            config_path=args.config,
        )
        async with App(settings) as app:
            url = f"http://{settings.server.host}:{app.port}"
            banner = _DEMO_BANNER.format(url=url, api=sim.api_url, kichat=_self_command())
            print(banner, file=sys.stderr, flush=True)
            sim.start_traffic(args.rate, slugs=[slug for slug, _ in DEMO_CHANNELS])
            if args.quiet:
                await stop.wait()
            else:
                await watch(url, *DEMO_CHANNELS[0], stop=stop)
            await sim.stop_traffic()


def _self_command() -> str:
    """How the user's shell runs this very kichat: ``kichat`` when that is on PATH, else the
    script of this installation (``.venv/bin/kichat`` after ``make demo``)."""
    script = Path(os.path.abspath(sys.executable)).with_name("kichat")
    found = shutil.which("kichat")
    if found is not None and os.path.samefile(found, script):
        return "kichat"
    if not script.exists():
        return f"{sys.executable} -m kichat"
    with contextlib.suppress(ValueError):
        return str(script.relative_to(Path.cwd()))
    return str(script)


_DEMO_BANNER = """
kichat demo: the gateway is serving Socket.IO and REST at {url}
  upstream: the built-in Kick simulator ({api}), random live traffic on xqc and moonlitfox
  try, in another terminal:
    curl {url}/api/v2/channels/xqc
    {kichat} watch {url} moonlitfox 4100123
  and point any Socket.IO client at {url} (subscribe {{channelName: "xqc", chatroomId: "668"}}).
  Ctrl-C stops everything.
"""
