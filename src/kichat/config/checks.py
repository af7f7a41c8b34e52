"""Checks of configuration values, and the helper that declares a setting.

Each check returns a problem (a phrase, without the setting's name) or ``None``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import field
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import parse_qs, urlsplit

from kichat.kick.events import template_problem

KIB = 1024
MIB = 1024 * 1024

Check = Callable[[Any], str | None]


def option(
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


def short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def number(value: float) -> str:
    """A number as one writes it in TOML or an environment variable: ``1000000``, not
    ``1e+06``; ``0.5``; ``10.0`` for a float setting's whole default."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    text = repr(float(value))
    if "e" in text and float(value).is_integer():
        return f"{int(value)}.0"
    return text


def between(lo: float, hi: float) -> Check:
    def check(value: float) -> str | None:
        if lo <= value <= hi:
            return None
        return f"must be between {number(lo)} and {number(hi)}, got {number(value)}"

    return check


def choice(*choices: str) -> Check:
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


def check_host(value: str) -> str | None:
    return None if _is_host(value) else f"must be an IP address or a host name, got {short(value)}"


def _url_problem(
    value: str, schemes: tuple[str, ...], what: str, *, echo: bool = True
) -> str | None:
    got = f", got {short(value)}" if echo else ""
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


def check_pusher_url(value: str) -> str | None:
    problem = _url_problem(value, ("ws", "wss"), "a Pusher WebSocket URL")
    if problem:
        return problem
    parts = urlsplit(value)
    if not re.fullmatch(r"/app/[A-Za-z0-9]+", parts.path):
        return f"path must be /app/<key> (the Pusher app key), got {short(parts.path)}"
    protocol = parse_qs(parts.query).get("protocol")
    if protocol is not None and protocol != ["7"]:
        return f"query must ask for protocol=7 (the protocol kichat speaks), got {protocol}"
    return None


def check_api_url(value: str) -> str | None:
    problem = _url_problem(value, ("http", "https"), "an http(s) base URL")
    if problem:
        return problem
    parts = urlsplit(value)
    if parts.query or parts.fragment or "@" in parts.netloc:
        return f"must be a base URL without credentials, query or fragment, got {short(value)}"
    return None


def check_proxy(value: str) -> str | None:
    if value == "":
        return None
    # http(s) only: SOCKS needs packages (socksio, python-socks) that are not dependencies.
    # Never echo a proxy URL: it may carry credentials.
    return _url_problem(value, ("http", "https"), "an http(s) proxy URL or empty", echo=False)


def check_redis_url(value: str) -> str | None:
    if value == "":
        return None
    # Never echo it: a Redis URL may carry a password.
    if value.startswith("unix://"):
        return None if len(value) > len("unix://") else "must name a socket path (unix:///path)"
    problem = _url_problem(value, ("redis", "rediss"), "a redis:// or rediss:// URL", echo=False)
    if problem:
        return problem
    path = urlsplit(value).path.strip("/")
    if path and not path.isdigit():
        return "its path must be a database number (redis://host:6379/0)"
    return None


def check_workers(value: str) -> str | None:
    if value == "auto" or (value.isdigit() and 1 <= int(value) <= 64):
        return None
    return f"must be a number of worker processes (1-64) or auto, got {short(value)}"


_NODE_ID_RE = re.compile(r"[a-z0-9]{1,16}")


def check_node_id(value: str) -> str | None:
    if value == "" or _NODE_ID_RE.fullmatch(value):
        return None
    return f"must be 1-16 of a-z 0-9 (it starts every session id of this node), got {short(value)}"


def check_key_prefix(value: str) -> str | None:
    if 1 <= len(value) <= 64 and value.isprintable() and " " not in value:
        return None
    return f"must be 1-64 printable characters without spaces, got {short(value)}"


_TOKEN_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def check_headers(value: Mapping[str, str]) -> str | None:
    for name, text in value.items():
        if not _TOKEN_RE.fullmatch(name):
            return f"header name {short(name)} is not a valid HTTP header name"
        if any(c in text for c in "\r\n\0"):
            return f"value of header {name!r} contains CR, LF or NUL"
    return None


def check_origins(value: tuple[str, ...]) -> str | None:
    for origin in value:
        if origin == "*":
            continue
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("",):
            return f"{short(origin)} is not '*' or an origin like https://example.com[:port]"
    return None


def check_networks(value: tuple[str, ...]) -> str | None:
    for item in value:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            return f"{short(item)} is not an IP address or CIDR network (e.g. 10.0.0.0/8)"
    return None


def check_sio_path(value: str) -> str | None:
    if re.fullmatch(r"(/[A-Za-z0-9._~-]+)+/?", value):
        return None
    return f"must be an absolute URL path such as /socket.io/, got {short(value)}"


def templates(placeholder: str, *, allow_empty: bool) -> Check:
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


def check_api_keys(value: tuple[str, ...]) -> str | None:
    for index, key in enumerate(value):
        if not re.fullmatch(r"[\x21-\x2b\x2d-\x7e]{1,256}", key):
            return f"key #{index + 1} must be 1-256 printable ASCII characters, no spaces or commas"
    return None


def check_emote_url(value: str) -> str | None:
    if value == "":
        return None  # emotes shown as their names
    rest = value.replace("{id}", "", 1)
    if "{id}" not in value or "{" in rest or "}" in rest:
        return f"must contain {{id}} exactly once and no other braces, got {short(value)}"
    problem = _url_problem(rest, ("http", "https"), "an http(s) URL", echo=False)
    if problem:
        return f"{problem}, got {short(value)}"
    if "@" in urlsplit(value).netloc or any(c in value for c in " \"'<>\\"):
        return f"must be a plain URL without credentials, quotes or spaces, got {short(value)}"
    return None


def check_client_dir(value: str) -> str | None:
    if value == "" or Path(value, "socket.io.min.js").is_file():
        return None
    return (
        f"must be a directory holding socket.io.min.js (socket.io-client's dist/), "
        f"got {short(value)}"
    )
