"""Reading the settings: the registry read back from the dataclasses, the TOML file, the
environment and the flags, every problem collected at once; documentation and display."""

from __future__ import annotations

import difflib
import json
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from types import MappingProxyType
from typing import get_type_hints

from kichat.config.checks import Check, short
from kichat.config.schema import Settings
from kichat.errors import ConfigError
from kichat.kick.events import CHANNEL_PLACEHOLDER, CHATROOM_PLACEHOLDER

ENV_PREFIX = "KICHAT_"
CONFIG_ENV = "KICHAT_CONFIG"
# KICHAT_* variables that are not settings: the config file path, and the test suite's knobs.
_NOT_SETTINGS_ENV = frozenset({CONFIG_ENV})
_NOT_SETTINGS_ENV_PREFIXES = ("KICHAT_TEST_",)
_FILE_SOURCE = "file "  # how values read from the TOML file name their source
_KIB = 1024
_MIB = 1024 * 1024


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
    # Environment variables and flags are text by nature and are parsed; a TOML file has types
    # of its own, so ``port = "3001"`` is a string where a number belongs, and is refused.
    typed = source.startswith(_FILE_SOURCE)
    try:
        value = _native(f, _from_text(f, raw) if isinstance(raw, str) and not typed else raw)
    except _BadValue as exc:
        got = type(raw).__name__ if f.secret else short(raw)
        hint = ""
        if typed and isinstance(raw, str) and f.kind in ("int", "float", "bool"):
            hint = f" (in TOML, write it without quotes: {f.key} = {raw.strip().lower()})"
        problems.append(f"{f.name} ({source}): {exc}, got {got}{hint}")
        return False, None
    problem = f.check(value) if f.check else None
    if problem:
        problems.append(f"{f.name} ({source}): {problem}")
        return False, None
    return True, value


def _similar_setting(name: str) -> str | None:
    """The setting someone most likely meant by an unknown dotted ``name``, or None.

    The part after the dot carries the meaning, so it is compared first, across every section
    (``limits.trusted`` -> ``server.trusted_proxies``, ``server.linger`` -> ``relay.linger``);
    whole names are compared only as a last resort and must be very close (a typo).
    """
    section, _, key = name.rpartition(".")
    by_key: dict[str, list[str]] = {}
    for f in _FIELDS.values():
        by_key.setdefault(f.key, []).append(f.name)

    def pick(keys: list[str]) -> str | None:
        names = [n for k in keys for n in by_key[k]]
        same_section = [n for n in names if n.startswith(f"{section}.")]
        return (same_section or names)[0] if names else None

    if key in by_key:
        return pick([key])
    close = difflib.get_close_matches(key, list(by_key), n=3, cutoff=0.75)
    if close:
        return pick(close)
    prefixed = [k for k in by_key if len(key) >= 4 and (k.startswith(key) or key.startswith(k))]
    if prefixed:
        return pick(prefixed)
    close = difflib.get_close_matches(name, list(_FIELDS), n=1, cutoff=0.85)
    return close[0] if close else None


def _suggest(name: str) -> str:
    similar = _similar_setting(name)
    return f" (did you mean {similar}?)" if similar else ""


def _suggest_env(var: str) -> str:
    rest = var.removeprefix(ENV_PREFIX).lower()
    for section in sorted(_SECTION_NAMES, key=len, reverse=True):
        if rest.startswith(f"{section}_"):
            name = f"{section}.{rest.removeprefix(section + '_')}"
            break
    else:
        name = f".{rest}"
    similar = _similar_setting(name)
    return f" (did you mean {_FIELDS[similar].env}?)" if similar else ""


def _read_file(path: str, problems: list[str]) -> dict[str, tuple[object, str]]:
    source = f"{_FILE_SOURCE}{path}"
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
            problems.append(f"config {source}: unknown setting {section}{_suggest('.' + section)}")
        elif section not in _SECTION_NAMES:
            close = difflib.get_close_matches(section, _SECTION_NAMES, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            problems.append(f"config {source}: unknown section [{section}]{hint}")
        elif not isinstance(table, dict):
            problems.append(f"config {source}: {section} must be a table ([{section}])")
        else:
            for key, value in table.items():
                name = f"{section}.{key}"
                if name in _FIELDS:
                    out[name] = (value, source)
                else:
                    problems.append(f"config {source}: unknown setting {name}{_suggest(name)}")
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
            problems.append(f"env {var}: unknown setting{_suggest_env(var)}")
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
            problems.append(f"command line: unknown setting {name}{_suggest(name)}")
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
    if s.server.workers != "1" and not s.cluster.redis_url:
        problems.append(
            f"server.workers ({source('server.workers')}): {s.server.workers} worker processes"
            " need cluster.redis_url, because the workers of one server are nodes of one cluster"
            " (they share feeds and sessions through Redis): run a redis-server and pass"
            " --redis-url redis://127.0.0.1:6379/0, or use one worker"
        )
    if s.server.workers != "1" and len(s.cluster.node_id) > 13:
        problems.append(
            f"cluster.node_id ({source('cluster.node_id')}): with several workers, at most 13"
            " characters (each worker's id is the node id, 'w' and its number)"
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


def render_settings_text(docs: list[SettingDoc] | None = None) -> str:
    """``kichat check-config --list``: each setting with its environment variables and its
    default written the way it is written in TOML, then its help."""
    lines = []
    for doc in describe_settings() if docs is None else docs:
        env = ", ".join((doc.env, *doc.aliases))
        default = json.dumps(_plain(doc.default), ensure_ascii=False)
        lines.append(f"{doc.name:38} {env:40} default {default} ({doc.type})")
        lines.append(f"    {doc.help}")
    return "\n".join(lines) + "\n"


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
