"""Typed, self-documenting configuration of the gateway.

Every setting has a dotted name ``section.key``, a type, a default and a help text, declared once
on the frozen dataclasses below; :func:`describe_settings` reads them back for the README's
reference table and ``kichat check-config --list``.

Precedence, lowest first: defaults < TOML file (``--config PATH`` or ``KICHAT_CONFIG``) <
``KICHAT_<SECTION>_<KEY>`` environment variables (a few short aliases such as ``KICHAT_PORT``) <
command-line flags. Lists in the environment are comma-separated, mappings are JSON objects.
Durations are seconds (floats), sizes are bytes.

:func:`load_settings` checks every value of every layer and raises one
:class:`~kichat.errors.ConfigError` listing *all* problems, each naming the setting and where
the bad value came from, so an operator fixes a file once rather than once per problem.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, get_type_hints
from urllib.parse import parse_qs, urlsplit

from kichat.errors import ConfigError
from kichat.kick.events import (
    CHANNEL_PLACEHOLDER,
    CHATROOM_PLACEHOLDER,
    DEFAULT_CHANNEL_CHANNELS,
    DEFAULT_CHATROOM_CHANNELS,
    template_problem,
)

__all__ = [
    "KICK_API_URL",
    "KICK_PUSHER_URL",
    "KickApiSettings",
    "LimitsSettings",
    "LogSettings",
    "PusherSettings",
    "RelaySettings",
    "ServerSettings",
    "SettingDoc",
    "Settings",
    "SocketIOSettings",
    "describe_settings",
    "load_settings",
    "render_settings_markdown",
    "settings_for_display",
    "validate_settings",
]

KICK_PUSHER_URL = (
    "wss://ws-us2.pusher.com/app/32cbd69e4b950bf97679"
    "?protocol=7&client=js&version=8.4.0&flash=false"
)
KICK_API_URL = "https://kick.com"
ENV_PREFIX = "KICHAT_"
CONFIG_ENV = "KICHAT_CONFIG"
# KICHAT_* variables that are not settings: the config file path, and the test suite's knobs.
_NOT_SETTINGS_ENV = frozenset({CONFIG_ENV})
_NOT_SETTINGS_ENV_PREFIXES = ("KICHAT_TEST_",)
_KIB = 1024
_MIB = 1024 * 1024

Check = Callable[[Any], str | None]


def _opt(
    default: Any,
    help: str,
    *,
    check: Check | None = None,
    unit: str = "",
    aliases: tuple[str, ...] = (),
    secret: bool = False,
) -> Any:
    meta = {"help": help, "check": check, "unit": unit, "aliases": aliases, "secret": secret}
    if isinstance(default, dict):
        frozen = MappingProxyType(dict(default))
        return field(default_factory=lambda: frozen, metadata=meta)
    return field(default=default, metadata=meta)


# --- checks: each returns a problem (without the setting's name) or None ----------------------


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _between(lo: float, hi: float) -> Check:
    def check(value: float) -> str | None:
        return None if lo <= value <= hi else f"must be between {lo:g} and {hi:g}, got {value!r}"

    return check


def _choice(*choices: str) -> Check:
    def check(value: str) -> str | None:
        return None if value in choices else f"must be one of {', '.join(choices)}, got {value!r}"

    return check


_HOSTNAME_RE = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?")


def _is_host(value: str) -> bool:
    try:
        ipaddress.ip_address(value.strip("[]"))
    except ValueError:
        return len(value) <= 253 and bool(_HOSTNAME_RE.fullmatch(value))
    return True


def _check_host(value: str) -> str | None:
    return None if _is_host(value) else f"must be an IP address or a host name, got {_short(value)}"


def _url_problem(
    value: str, schemes: tuple[str, ...], what: str, *, echo: bool = True
) -> str | None:
    got = f", got {_short(value)}" if echo else ""
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return f"must be {what}: bad URL or port{got}"
    if parts.scheme not in schemes:
        return f"must be {what} (scheme {'/'.join(schemes)}){got}"
    if not parts.hostname or not _is_host(parts.hostname):
        return f"must be {what} with a host{got}"
    return None


def _check_pusher_url(value: str) -> str | None:
    problem = _url_problem(value, ("ws", "wss"), "a Pusher WebSocket URL")
    if problem:
        return problem
    parts = urlsplit(value)
    if not re.fullmatch(r"/app/[A-Za-z0-9]+", parts.path):
        return f"path must be /app/<key> (the Pusher app key), got {_short(parts.path)}"
    protocol = parse_qs(parts.query).get("protocol")
    if protocol is not None and protocol != ["7"]:
        return f"query must ask for protocol=7 (the protocol kichat speaks), got {protocol}"
    return None


def _check_api_url(value: str) -> str | None:
    problem = _url_problem(value, ("http", "https"), "an http(s) base URL")
    if problem:
        return problem
    parts = urlsplit(value)
    if parts.query or parts.fragment or "@" in parts.netloc:
        return f"must be a base URL without credentials, query or fragment, got {_short(value)}"
    return None


def _check_proxy(value: str) -> str | None:
    if value == "":
        return None
    # http(s) only: SOCKS needs packages (socksio, python-socks) that are not dependencies.
    # Never echo a proxy URL: it may carry credentials.
    return _url_problem(value, ("http", "https"), "an http(s) proxy URL or empty", echo=False)


_TOKEN_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def _check_headers(value: Mapping[str, str]) -> str | None:
    for name, text in value.items():
        if not _TOKEN_RE.fullmatch(name):
            return f"header name {_short(name)} is not a valid HTTP header name"
        if any(c in text for c in "\r\n\0"):
            return f"value of header {name!r} contains CR, LF or NUL"
    return None


def _check_origins(value: tuple[str, ...]) -> str | None:
    for origin in value:
        if origin == "*":
            continue
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("",):
            return f"{_short(origin)} is not '*' or an origin like https://example.com[:port]"
    return None


def _check_networks(value: tuple[str, ...]) -> str | None:
    for item in value:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            return f"{_short(item)} is not an IP address or CIDR network (e.g. 10.0.0.0/8)"
    return None


def _check_sio_path(value: str) -> str | None:
    if re.fullmatch(r"(/[A-Za-z0-9._~-]+)+/?", value):
        return None
    return f"must be an absolute URL path such as /socket.io/, got {_short(value)}"


def _templates(placeholder: str, *, allow_empty: bool) -> Check:
    def check(value: tuple[str, ...]) -> str | None:
        if not value and not allow_empty:
            return f"must list at least one channel template containing {placeholder}"
        if len(set(value)) != len(value):
            return "lists a template twice"
        for template in value:
            problem = template_problem(template, placeholder)
            if problem:
                return f"template {problem}"
        return None

    return check


def _check_api_keys(value: tuple[str, ...]) -> str | None:
    for index, key in enumerate(value):
        if not re.fullmatch(r"[\x21-\x2b\x2d-\x7e]{1,256}", key):
            return f"key #{index + 1} must be 1-256 printable ASCII characters, no spaces or commas"
    return None


# --- the settings -----------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class ServerSettings:
    """The HTTP server that carries Socket.IO, the REST API, health and metrics."""

    host: str = _opt(
        "127.0.0.1", "Address to listen on.", check=_check_host, aliases=("KICHAT_HOST",)
    )
    port: int = _opt(
        3000,
        "TCP port to listen on (0 picks a free port, for tests).",
        check=_between(0, 65535),
        aliases=("KICHAT_PORT",),
    )
    cors_origins: tuple[str, ...] = _opt(
        ("*",),
        "Origins allowed by CORS: '*' or origins such as https://example.com.",
        check=_check_origins,
    )
    trusted_proxies: tuple[str, ...] = _opt(
        (),
        "IPs/CIDRs of reverse proxies whose X-Forwarded-For is believed (per-IP limits use it).",
        check=_check_networks,
    )
    shutdown_timeout: float = _opt(
        10.0, "Grace period for clients and upstream on shutdown.", check=_between(0, 3600)
    )
    socket_send_buffer: int = _opt(
        0,
        "SO_SNDBUF of client sockets (0: the kernel's autotuning). A cap bounds the kernel"
        " memory a client that stops reading can pin.",
        unit="bytes",
        check=_between(0, 64 * _MIB),
    )
    use_uvloop: bool = _opt(True, "Use uvloop's event loop when it is installed.")


@dataclass(frozen=True, kw_only=True, slots=True)
class SocketIOSettings:
    """The Socket.IO v4 server clients connect to."""

    path: str = _opt("/socket.io/", "URL path of the Socket.IO endpoint.", check=_check_sio_path)
    ping_interval: float = _opt(
        25.0, "Engine.IO ping interval sent to clients.", check=_between(1, 300)
    )
    ping_timeout: float = _opt(
        20.0,
        "How long a client may take to answer a ping (below 1 s, ordinary stalls on a loaded"
        " machine would drop healthy clients).",
        check=_between(1, 300),
    )
    max_payload: int = _opt(
        1_000_000,
        "Largest packet accepted from a client.",
        unit="bytes",
        check=_between(1 * _KIB, 100 * _MIB),
    )
    connect_timeout: float = _opt(
        45.0, "Time a client has to join a namespace after the handshake.", check=_between(1, 600)
    )
    recovery: bool = _opt(True, "Connection state recovery: replay missed events on reconnect.")
    recovery_window: float = _opt(
        120.0, "How long a disconnected session can be recovered.", check=_between(1, 3600)
    )
    recovery_buffer_bytes: int = _opt(
        64 * _MIB,
        "Memory for events kept for recovery (all sessions together).",
        unit="bytes",
        check=_between(64 * _KIB, 64 * 1024 * _MIB),
    )
    flush_interval: float = _opt(
        0.005,
        "Delay before queued packets are written, so that packets of several broadcasts leave"
        " in one burst: fewer writes and wake-ups for a few ms of latency (0: next loop turn).",
        check=_between(0, 1),
    )
    outbound_buffer_limit: int = _opt(
        4 * _MIB,
        "Unsent bytes per connection before a slow consumer is cut off.",
        unit="bytes",
        check=_between(64 * _KIB, 1024 * _MIB),
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class PusherSettings:
    """The upstream Pusher connections to Kick."""

    url: str = _opt(
        KICK_PUSHER_URL,
        "Kick's Pusher WebSocket URL (ws/wss, path /app/<key>); Kick may rotate the key.",
        check=_check_pusher_url,
        aliases=("KICHAT_PUSHER_URL",),
    )
    max_channels_per_connection: int = _opt(
        100, "Channels per upstream connection before another is opened.", check=_between(1, 1000)
    )
    pong_timeout: float = _opt(
        30.0, "How long Pusher may take to answer our ping.", check=_between(1, 300)
    )
    subscribe_timeout: float = _opt(
        10.0, "How long to wait for a subscription acknowledgement.", check=_between(0.1, 300)
    )
    subscribe_retries: int = _opt(
        2, "Retries of an unacknowledged subscription.", check=_between(0, 10)
    )
    backoff_initial: float = _opt(
        1.0, "First reconnect delay (seconds; doubles, with jitter).", check=_between(0.01, 300)
    )
    backoff_max: float = _opt(
        30.0, "Longest reconnect delay (seconds).", check=_between(0.01, 3600)
    )
    fatal_retry_interval: float = _opt(
        300.0,
        "Retry delay after a fatal Pusher error (4000-4099, e.g. a rotated key).",
        check=_between(1, 86400),
    )
    proxy: str = _opt(
        "",
        "Proxy for the upstream WebSocket (http:// or https:// URL), empty for none.",
        check=_check_proxy,
        secret=True,
    )
    headers: Mapping[str, str] = _opt(
        {},
        "Extra HTTP headers for the upstream WebSocket handshake.",
        check=_check_headers,
        secret=True,
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class KickApiSettings:
    """Kick's REST API (channel lookup, chat history, user endpoints)."""

    url: str = _opt(
        KICK_API_URL,
        "Base URL of Kick's REST API.",
        check=_check_api_url,
        aliases=("KICHAT_KICK_API_URL",),
    )
    timeout: float = _opt(10.0, "Timeout of one request to Kick.", check=_between(0.1, 300))
    retries: int = _opt(2, "Retries of a failed GET (timeouts, 5xx, 429).", check=_between(0, 10))
    proxy: str = _opt(
        "",
        "Proxy for requests to Kick (http:// or https:// URL), empty for none.",
        check=_check_proxy,
        secret=True,
    )
    headers: Mapping[str, str] = _opt(
        {},
        "Extra headers for requests to Kick (e.g. a User-Agent or cookies for Kick's edge).",
        check=_check_headers,
        secret=True,
    )
    channel_cache_ttl: float = _opt(
        300.0, "How long a channel lookup is cached (0 disables).", check=_between(0, 86400)
    )
    not_found_ttl: float = _opt(
        30.0, "How long a 'channel not found' is cached.", check=_between(0, 86400)
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class RelaySettings:
    """Which upstream channels a room follows and how events are relayed."""

    chatroom_channels: tuple[str, ...] = _opt(
        DEFAULT_CHATROOM_CHANNELS,
        "Pusher channels subscribed per chatroom ({chatroom_id} is replaced).",
        check=_templates(CHATROOM_PLACEHOLDER, allow_empty=False),
    )
    channel_channels: tuple[str, ...] = _opt(
        DEFAULT_CHANNEL_CHANNELS,
        "Pusher channels subscribed per channel when its id is known ({channel_id} is replaced).",
        check=_templates(CHANNEL_PLACEHOLDER, allow_empty=True),
    )
    linger: float = _opt(
        5.0,
        "Keep an upstream subscription this long after its last client leaves.",
        check=_between(0, 3600),
    )
    dedupe_window: float = _opt(
        10.0,
        "Drop an event seen again on an alias channel within this window (0 disables).",
        check=_between(0, 3600),
    )
    stream_lookup_wait: float = _opt(
        2.0,
        "How long a subscribe reply waits for the channel lookup stream events need (chat"
        " flows meanwhile; later replies say stream_events_pending).",
        check=_between(0, 60),
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class LimitsSettings:
    """Abuse limits, per client IP or per Socket.IO client."""

    rest_per_minute: int = _opt(
        100, "REST requests per minute per IP.", check=_between(1, 1_000_000)
    )
    connections_per_ip: int = _opt(
        10, "Concurrent Socket.IO connections per IP.", check=_between(1, 1_000_000)
    )
    subscriptions_per_client: int = _opt(
        50, "Rooms one Socket.IO client may be subscribed to.", check=_between(1, 10_000)
    )
    subscribe_rate: int = _opt(
        20, "subscribe/unsubscribe calls per client per 10 s.", check=_between(1, 10_000)
    )
    api_keys: tuple[str, ...] = _opt(
        (), "If set, clients must present one of these keys.", check=_check_api_keys, secret=True
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class LogSettings:
    """Logging."""

    level: str = _opt(
        "info",
        "Log level: debug, info, warning, error or critical (any case).",
        check=_choice("debug", "info", "warning", "error", "critical"),
        aliases=("KICHAT_LOG_LEVEL",),
    )
    format: str = _opt("text", "Log line format: text or json.", check=_choice("text", "json"))


@dataclass(frozen=True, kw_only=True, slots=True)
class Settings:
    """All settings. ``Settings()`` is the default configuration."""

    server: ServerSettings = field(default_factory=ServerSettings)
    socketio: SocketIOSettings = field(default_factory=SocketIOSettings)
    pusher: PusherSettings = field(default_factory=PusherSettings)
    kick_api: KickApiSettings = field(default_factory=KickApiSettings)
    relay: RelaySettings = field(default_factory=RelaySettings)
    limits: LimitsSettings = field(default_factory=LimitsSettings)
    log: LogSettings = field(default_factory=LogSettings)


# --- the registry, read back from the dataclasses ----------------------------------------------


@dataclass(frozen=True, slots=True)
class SettingDoc:
    """One setting, as documented: in the README and by ``kichat check-config --list``."""

    name: str
    type: str
    default: object
    env: str
    aliases: tuple[str, ...]
    help: str
    secret: bool


@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    section: str
    key: str
    kind: str  # bool | int | float | str | list | map
    default: object
    help: str
    check: Check | None
    unit: str
    aliases: tuple[str, ...]
    secret: bool

    @property
    def env(self) -> str:
        return f"{ENV_PREFIX}{self.section}_{self.key}".upper()


def _kind(tp: object) -> str:
    simple: dict[object, str] = {bool: "bool", int: "int", float: "float", str: "str"}
    if tp in simple:
        return simple[tp]
    if getattr(tp, "__origin__", None) is tuple:
        return "list"
    return "map"


def _build_registry() -> dict[str, _Field]:
    registry: dict[str, _Field] = {}
    for section_field in fields(Settings):
        section_cls = get_type_hints(Settings)[section_field.name]
        hints = get_type_hints(section_cls)
        defaults = section_cls()
        for f in fields(section_cls):
            kind = _kind(hints[f.name])
            name = f"{section_field.name}.{f.name}"
            registry[name] = _Field(
                name=name,
                section=section_field.name,
                key=f.name,
                kind=kind,
                default=getattr(defaults, f.name),
                help=f.metadata["help"],
                check=f.metadata["check"],
                unit=f.metadata["unit"] or ("seconds" if kind == "float" else ""),
                aliases=f.metadata["aliases"],
                secret=f.metadata["secret"],
            )
    return registry


_FIELDS = _build_registry()
_SECTION_NAMES = tuple(f.name for f in fields(Settings))
_ENV_NAMES: dict[str, str] = {f.env: f.name for f in _FIELDS.values()} | {
    alias: f.name for f in _FIELDS.values() for alias in f.aliases
}


# --- reading and coercing values ---------------------------------------------------------------


class _BadValue(Exception):
    pass


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _from_text(f: _Field, text: str) -> object:
    """Parse an environment variable or a string flag into the setting's Python type."""
    if f.kind == "str":
        return text
    if f.kind == "bool":
        word = text.strip().lower()
        if word in _TRUE or word in _FALSE:
            return word in _TRUE
        raise _BadValue("expected a boolean (true/false, 1/0, yes/no, on/off)")
    if f.kind == "int":
        if not re.fullmatch(r"\s*[+-]?[0-9]+\s*", text):
            raise _BadValue("expected a whole number")
        return int(text)
    if f.kind == "float":
        try:
            return float(text)
        except ValueError:
            raise _BadValue("expected a number") from None
    if f.kind == "list":
        return tuple(item.strip() for item in text.split(",") if item.strip())
    try:
        return json.loads(text)
    except ValueError:
        raise _BadValue('expected a JSON object such as {"User-Agent": "..."}') from None


def _native(f: _Field, value: object) -> object:
    """Check a Python value (from TOML, a flag, or parsed text) against the setting's type."""
    kind = f.kind
    if kind == "bool" and isinstance(value, bool):
        return value
    if kind == "int" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind == "float" and isinstance(value, int | float) and not isinstance(value, bool):
        if math.isfinite(value):
            return float(value)
        raise _BadValue("expected a finite number")
    if kind == "str" and isinstance(value, str):
        return value.lower() if f.name == "log.level" else value
    if kind == "list" and isinstance(value, list | tuple):
        if all(isinstance(item, str) for item in value):
            return tuple(value)
        raise _BadValue("expected a list of strings")
    if kind == "map" and isinstance(value, Mapping):
        if all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            return MappingProxyType(dict(value))
        raise _BadValue("expected a table of string values")
    expected = {
        "bool": "true or false",
        "int": "a whole number",
        "float": "a number",
        "str": "a string",
        "list": "a list of strings",
        "map": "a table (JSON object) of string values",
    }[kind]
    raise _BadValue(f"expected {expected}")


def _accept(f: _Field, raw: object, source: str, problems: list[str]) -> tuple[bool, object]:
    try:
        value = _native(f, _from_text(f, raw) if isinstance(raw, str) else raw)
    except _BadValue as exc:
        got = type(raw).__name__ if f.secret else _short(raw)
        problems.append(f"{f.name} ({source}): {exc}, got {got}")
        return False, None
    problem = f.check(value) if f.check else None
    if problem:
        problems.append(f"{f.name} ({source}): {problem}")
        return False, None
    return True, value


def _suggest(word: str, candidates: object) -> str:
    close = difflib.get_close_matches(word, list(candidates), n=1)  # type: ignore[call-overload]
    return f" (did you mean {close[0]}?)" if close else ""


def _read_file(path: str, problems: list[str]) -> dict[str, tuple[object, str]]:
    source = f"file {path}"
    try:
        with open(path, "rb") as fh:
            doc = tomllib.load(fh)
    except OSError as exc:
        problems.append(f"config {source}: cannot read it ({exc.strerror or exc})")
        return {}
    except tomllib.TOMLDecodeError as exc:
        problems.append(f"config {source}: invalid TOML: {exc}")
        return {}
    out: dict[str, tuple[object, str]] = {}
    for section, table in doc.items():
        if section not in _SECTION_NAMES and not isinstance(table, dict):
            # A setting written without its section, e.g. "port = 80" instead of [server].
            match = [name for name in _FIELDS if name.endswith(f".{section}")]
            hint = f" (did you mean {match[0]}?)" if match else ""
            problems.append(f"config {source}: unknown setting {section}{hint}")
        elif section not in _SECTION_NAMES:
            hint = _suggest(section, _SECTION_NAMES)
            problems.append(f"config {source}: unknown section [{section}]{hint}")
        elif not isinstance(table, dict):
            problems.append(f"config {source}: {section} must be a table ([{section}])")
        else:
            for key, value in table.items():
                name = f"{section}.{key}"
                if name in _FIELDS:
                    out[name] = (value, source)
                else:
                    problems.append(
                        f"config {source}: unknown setting {name}{_suggest(name, _FIELDS)}"
                    )
    return out


def _read_env(env: Mapping[str, str], problems: list[str]) -> dict[str, tuple[object, str]]:
    out: dict[str, tuple[object, str]] = {}
    for var in sorted(env):
        if (
            not var.startswith(ENV_PREFIX)
            or var in _NOT_SETTINGS_ENV
            or var.startswith(_NOT_SETTINGS_ENV_PREFIXES)
        ):
            continue
        name = _ENV_NAMES.get(var)
        if name is None:
            problems.append(f"env {var}: unknown setting{_suggest(var, _ENV_NAMES)}")
        elif name in out and out[name][0] != env[var]:
            problems.append(f"{name}: set differently by {out[name][1]} and env {var}")
        else:
            out[name] = (env[var], f"env {var}")
    return out


def _read_flags(flags: Mapping[str, object], problems: list[str]) -> dict[str, tuple[object, str]]:
    out: dict[str, tuple[object, str]] = {}
    for name, value in flags.items():
        if value is None:  # argparse's "not given"
            continue
        if name in _FIELDS:
            out[name] = (value, "command line")
        else:
            problems.append(f"command line: unknown setting {name}{_suggest(name, _FIELDS)}")
    return out


# --- public API --------------------------------------------------------------------------------


def load_settings(
    argv_overrides: Mapping[str, object] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    config_path: str | None = None,
) -> Settings:
    """Build the settings from defaults, a TOML file, ``KICHAT_*`` variables and flags.

    ``argv_overrides`` maps dotted names (``"server.port"``) to values; strings are parsed like
    environment variables, ``None`` means "not given". ``env`` defaults to ``os.environ``.
    ``config_path`` (``--config``) wins over ``KICHAT_CONFIG``.

    Raises :class:`ConfigError` listing every problem found in every layer.
    """
    env = os.environ if env is None else env
    problems: list[str] = []
    path = config_path or env.get(CONFIG_ENV) or None
    layers = [
        _read_file(path, problems) if path else {},
        _read_env(env, problems),
        _read_flags(argv_overrides or {}, problems),
    ]
    values: dict[str, object] = {}
    sources: dict[str, str] = {}
    for layer in layers:
        for name, (raw, source) in layer.items():
            ok, value = _accept(_FIELDS[name], raw, source, problems)
            if ok:
                values[name] = value
                sources[name] = source
    settings = _assemble(values)
    problems.extend(_cross_problems(settings, lambda name: sources.get(name, "default")))
    if problems:
        raise ConfigError(problems)
    return settings


def validate_settings(settings: Settings) -> list[str]:
    """Every problem of settings built in code (``load_settings`` checks its own input)."""
    problems: list[str] = []
    for f in _FIELDS.values():
        value = getattr(getattr(settings, f.section), f.key)
        try:
            value = _native(f, value)
        except _BadValue as exc:
            problems.append(f"{f.name}: {exc}")
            continue
        problem = f.check(value) if f.check else None
        if problem:
            problems.append(f"{f.name}: {problem}")
    problems.extend(_cross_problems(settings, lambda name: "value"))
    return problems


def _assemble(values: Mapping[str, object]) -> Settings:
    sections: dict[str, dict[str, object]] = {name: {} for name in _SECTION_NAMES}
    for name, value in values.items():
        f = _FIELDS[name]
        sections[f.section][f.key] = value
    hints = get_type_hints(Settings)
    return Settings(**{name: hints[name](**kwargs) for name, kwargs in sections.items()})


def _cross_problems(s: Settings, source: Callable[[str], str]) -> list[str]:
    problems: list[str] = []
    if s.pusher.backoff_max < s.pusher.backoff_initial:
        problems.append(
            f"pusher.backoff_max ({source('pusher.backoff_max')}) must be at least"
            f" pusher.backoff_initial ({source('pusher.backoff_initial')})"
        )
    # A chatroom template and a channel template with the same text around their placeholder
    # would map chatroom N and channel N to one Pusher channel.
    chatroom_shapes = {tuple(t.split(CHATROOM_PLACEHOLDER, 1)) for t in s.relay.chatroom_channels}
    for template in s.relay.channel_channels:
        if tuple(template.split(CHANNEL_PLACEHOLDER, 1)) in chatroom_shapes:
            problems.append(
                f"relay.channel_channels ({source('relay.channel_channels')}): template"
                f" {template!r} has the same shape as a relay.chatroom_channels template"
                f" ({source('relay.chatroom_channels')}), so a chatroom id and a channel id"
                " would name the same Pusher channel"
            )
    return problems


def describe_settings() -> list[SettingDoc]:
    """Every setting with its type, default, environment variable(s) and help, in order."""
    labels = {
        "bool": "bool",
        "int": "int",
        "float": "float",
        "str": "string",
        "list": "list of strings",
        "map": "map of strings",
    }
    return [
        SettingDoc(
            name=f.name,
            type=labels[f.kind] + (f" ({f.unit})" if f.unit else ""),
            default=f.default,
            env=f.env,
            aliases=tuple(a for a in f.aliases if a != f.env),
            help=f.help,
            secret=f.secret,
        )
        for f in _FIELDS.values()
    ]


def _plain(value: object) -> object:
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, tuple):
        return list(value)
    return value


def render_settings_markdown(docs: list[SettingDoc] | None = None) -> str:
    """The configuration reference as a Markdown table (defaults shown as TOML/JSON literals)."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    rows = [
        "| Setting | Type | Default | Environment | Description |",
        "|---|---|---|---|---|",
    ]
    for doc in describe_settings() if docs is None else docs:
        default = json.dumps(_plain(doc.default), ensure_ascii=False)
        env = ", ".join(f"`{name}`" for name in (doc.env, *doc.aliases))
        rows.append(f"| `{doc.name}` | {doc.type} | `{cell(default)}` | {env} | {cell(doc.help)} |")
    return "\n".join(rows) + "\n"


REDACTED = "***"


def _redact_url(url: str) -> str:
    """Hide the user-info part (credentials) of a URL; the rest helps debugging."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    authority, slash, tail = rest.partition("/")
    if "@" in authority:
        authority = REDACTED + "@" + authority.rsplit("@", 1)[1]
    return f"{scheme}://{authority}{slash}{tail}"


def settings_for_display(settings: Settings) -> dict[str, dict[str, object]]:
    """Settings as plain JSON-able data, with secrets redacted.

    API keys and header values become ``"***"`` (header names stay), and credentials in URLs
    (proxies, base URLs) are hidden.
    """
    out: dict[str, dict[str, object]] = {name: {} for name in _SECTION_NAMES}
    for f in _FIELDS.values():
        value = getattr(getattr(settings, f.section), f.key)
        if f.secret and f.kind == "map":
            value = dict.fromkeys(value, REDACTED)
        elif f.secret and f.kind == "list":
            value = [REDACTED] * len(value)
        elif isinstance(value, str) and (f.secret or f.key == "url"):
            value = _redact_url(value)
        out[f.section][f.key] = _plain(value)
    return out
