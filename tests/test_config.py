"""Configuration: precedence, parsing, validation (every rule), documentation and redaction."""

from __future__ import annotations

import dataclasses
import json
import tomllib
from collections.abc import Mapping
from pathlib import Path

import pytest

from kichat.config import (
    KICK_API_URL,
    KICK_PUSHER_URL,
    KickApiSettings,
    ServerSettings,
    Settings,
    describe_settings,
    load_settings,
    render_settings_markdown,
    render_settings_text,
    settings_for_display,
    validate_settings,
)
from kichat.errors import ConfigError


def problems_of(
    flags: dict[str, object] | None = None,
    *,
    env: dict[str, str] | None = None,
    config_path: str | None = None,
) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        load_settings(flags, env=env or {}, config_path=config_path)
    assert exc.value.problems, "ConfigError without problems"
    return exc.value.problems


def write_toml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "kichat.toml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_defaults() -> None:
    settings = load_settings(env={})
    assert settings == Settings()
    assert settings.server.host == "127.0.0.1"
    assert settings.server.port == 3000
    assert settings.server.cors_origins == ("*",)
    assert settings.pusher.url == KICK_PUSHER_URL
    assert settings.pusher.url.startswith("wss://ws-us2.pusher.com/app/32cbd69e4b950bf97679?")
    assert settings.kick_api.url == KICK_API_URL == "https://kick.com"
    assert settings.relay.chatroom_channels == (
        "chatrooms.{chatroom_id}.v2",
        "chatrooms.{chatroom_id}",
    )
    assert settings.relay.channel_channels == (
        "channel.{channel_id}",
        "predictions-channel-{channel_id}",
    )
    assert settings.socketio.recovery_buffer_bytes == 64 * 1024 * 1024
    assert settings.socketio.outbound_buffer_limit == 4 * 1024 * 1024
    assert settings.limits.api_keys == ()
    assert dict(settings.kick_api.headers) == {}
    assert validate_settings(settings) == []


def test_precedence_file_env_flag(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[server]\nport = 4000\nhost = '0.0.0.0'\n")
    env = {"KICHAT_PORT": "5000"}
    assert load_settings(env={}, config_path=path).server.port == 4000
    assert load_settings(env=env, config_path=path).server.port == 5000
    flagged = load_settings({"server.port": 6000}, env=env, config_path=path)
    assert flagged.server.port == 6000
    # Settings not overridden keep the value of the highest layer that set them.
    assert flagged.server.host == "0.0.0.0"
    assert flagged.server.shutdown_timeout == 10.0


def test_config_file_from_env_and_flag_wins(tmp_path: Path) -> None:
    env_file = tmp_path / "env.toml"
    env_file.write_text("[log]\nlevel = 'debug'\n")
    flag_file = tmp_path / "flag.toml"
    flag_file.write_text("[log]\nlevel = 'error'\n")
    env = {"KICHAT_CONFIG": str(env_file)}
    assert load_settings(env=env).log.level == "debug"
    assert load_settings(env=env, config_path=str(flag_file)).log.level == "error"


def test_full_file(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path,
        """
[server]
cors_origins = ["https://a.example", "http://localhost:5173"]
trusted_proxies = ["10.0.0.0/8", "::1"]
use_uvloop = false

[socketio]
ping_interval = 10
max_payload = 2048

[pusher]
url = "ws://127.0.0.1:9000/app/testkey?protocol=7"

[pusher.headers]
Origin = "https://kick.com"

[kick_api]
url = "http://127.0.0.1:9001"
headers = { "User-Agent" = "kichat-test" }

[relay]
chatroom_channels = ["chatrooms.{chatroom_id}.v2", "chatroom_{chatroom_id}"]
channel_channels = []

[limits]
api_keys = ["k1-abcdef", "k2-ghijkl"]
""",
    )
    s = load_settings(env={}, config_path=path)
    assert s.server.cors_origins == ("https://a.example", "http://localhost:5173")
    assert s.server.trusted_proxies == ("10.0.0.0/8", "::1")
    assert s.server.use_uvloop is False
    assert s.socketio.ping_interval == 10.0
    assert isinstance(s.socketio.ping_interval, float)
    assert s.socketio.max_payload == 2048
    assert s.pusher.url == "ws://127.0.0.1:9000/app/testkey?protocol=7"
    assert dict(s.pusher.headers) == {"Origin": "https://kick.com"}
    assert dict(s.kick_api.headers) == {"User-Agent": "kichat-test"}
    assert s.relay.chatroom_channels == ("chatrooms.{chatroom_id}.v2", "chatroom_{chatroom_id}")
    assert s.relay.channel_channels == ()
    assert s.limits.api_keys == ("k1-abcdef", "k2-ghijkl")


def test_env_parsing() -> None:
    env = {
        "KICHAT_HOST": "::",
        "KICHAT_SERVER_CORS_ORIGINS": " https://a.example , ,https://b.example:8443 ",
        "KICHAT_SERVER_TRUSTED_PROXIES": "",
        "KICHAT_SERVER_USE_UVLOOP": "off",
        "KICHAT_SOCKETIO_RECOVERY": "YES",
        "KICHAT_SOCKETIO_PING_TIMEOUT": "2.5",
        "KICHAT_KICK_API_HEADERS": '{"User-Agent": "Mozilla/5.0", "Cookie": "cf_clearance=x"}',
        "KICHAT_KICK_API_URL": "http://127.0.0.1:1234/prefix",
        "KICHAT_PUSHER_URL": "ws://127.0.0.1:1/app/abc",
        "KICHAT_LOG_LEVEL": "WARNING",
        "KICHAT_LIMITS_API_KEYS": "first-key,second-key",
        "KICHAT_RELAY_LINGER": "0",
    }
    s = load_settings(env=env)
    assert s.server.host == "::"
    assert s.server.cors_origins == ("https://a.example", "https://b.example:8443")
    assert s.server.trusted_proxies == ()
    assert s.server.use_uvloop is False
    assert s.socketio.recovery is True
    assert s.socketio.ping_timeout == 2.5
    assert dict(s.kick_api.headers) == {"User-Agent": "Mozilla/5.0", "Cookie": "cf_clearance=x"}
    assert s.kick_api.url == "http://127.0.0.1:1234/prefix"
    assert s.pusher.url == "ws://127.0.0.1:1/app/abc"
    assert s.log.level == "warning"
    assert s.limits.api_keys == ("first-key", "second-key")
    assert s.relay.linger == 0.0


def test_flags_accept_strings_and_typed_values_and_skip_none() -> None:
    s = load_settings(
        {
            "server.port": "8080",
            "socketio.recovery": False,
            "log.format": "json",
            "server.host": None,
        },
        env={},
    )
    assert s.server.port == 8080
    assert s.socketio.recovery is False
    assert s.log.format == "json"
    assert s.server.host == "127.0.0.1"


def test_unknown_env_vars_are_reported_with_a_suggestion() -> None:
    problems = problems_of(env={"KICHAT_FOO": "1", "KICHAT_SERVER_PROT": "1"})
    assert any("KICHAT_FOO" in p and "unknown setting" in p for p in problems)
    assert any(
        "KICHAT_SERVER_PROT" in p and "did you mean KICHAT_SERVER_PORT" in p for p in problems
    )
    assert len(problems) == 2


def test_non_setting_env_vars_are_ignored() -> None:
    env = {"KICHAT_TEST_UNIT": "2", "PATH": "/bin", "kichat_port": "x", "KICHATPORT": "x"}
    assert load_settings(env=env) == Settings()


def test_alias_and_long_name_must_agree() -> None:
    assert load_settings(env={"KICHAT_PORT": "81", "KICHAT_SERVER_PORT": "81"}).server.port == 81
    problems = problems_of(env={"KICHAT_PORT": "81", "KICHAT_SERVER_PORT": "82"})
    assert problems == [
        "server.port: set differently by env KICHAT_PORT and env KICHAT_SERVER_PORT"
    ]


def test_unknown_file_entries(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path,
        "port = 1\nlog = 'debug'\n[servr]\nhost = 'x'\n[server]\nprot = 1\n[relay]\nlinger = 1\n",
    )
    problems = problems_of(config_path=path)
    assert len(problems) == 4
    assert any("unknown setting port (did you mean server.port?)" in p for p in problems)
    assert any("log must be a table ([log])" in p for p in problems)
    assert any("unknown section [servr] (did you mean server?)" in p for p in problems)
    assert any("unknown setting server.prot (did you mean server.port?)" in p for p in problems)
    assert all(f"file {path}" in p for p in problems)


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.toml")
    [problem] = problems_of(config_path=missing)
    assert missing in problem
    assert "cannot read" in problem
    bad = write_toml(tmp_path, "[server\nport = 1\n")
    [problem] = problems_of(config_path=bad)
    assert "invalid TOML" in problem


def test_unknown_flag() -> None:
    [problem] = problems_of({"server.prot": 1})
    assert problem == "command line: unknown setting server.prot (did you mean server.port?)"


@pytest.mark.parametrize(
    ("unknown", "suggested"),
    [
        # The part after the dot is compared across sections first...
        ("limits.trusted", "server.trusted_proxies"),
        ("server.linger", "relay.linger"),
        ("limits.api_key", "limits.api_keys"),
        ("socketio.recover", "socketio.recovery"),
        # ...and a name like nothing known gets no suggestion rather than a wrong one.
        ("limits.foo", None),
        ("relay.something_else", None),
    ],
)
def test_suggestions_for_unknown_settings(unknown: str, suggested: str | None) -> None:
    [problem] = problems_of({unknown: 1})
    hint = f" (did you mean {suggested}?)" if suggested else ""
    assert problem == f"command line: unknown setting {unknown}{hint}"


def test_suggestions_for_unknown_environment_variables() -> None:
    [problem] = problems_of(env={"KICHAT_LIMITS_TRUSTED": "10.0.0.1"})
    assert problem == (
        "env KICHAT_LIMITS_TRUSTED: unknown setting (did you mean KICHAT_SERVER_TRUSTED_PROXIES?)"
    )


def test_toml_values_keep_their_types_while_text_is_parsed(tmp_path: Path) -> None:
    # A TOML file has types: a quoted number is a string where a number belongs.
    path = write_toml(
        tmp_path, '[server]\nport = "3001"\nuse_uvloop = "false"\n[relay]\nlinger = "1.5"\n'
    )
    assert sorted(problems_of(config_path=path)) == [
        f"relay.linger (file {path}): expected a number, got '1.5'"
        " (in TOML, write it without quotes: linger = 1.5)",
        f"server.port (file {path}): expected a whole number, got '3001'"
        " (in TOML, write it without quotes: port = 3001)",
        f"server.use_uvloop (file {path}): expected true or false, got 'false'"
        " (in TOML, write it without quotes: use_uvloop = false)",
    ]
    path = write_toml(tmp_path, '[server]\ntrusted_proxies = "10.0.0.1"\n')
    assert problems_of(config_path=path) == [
        f"server.trusted_proxies (file {path}): expected a list of strings, got '10.0.0.1'"
    ]
    # Environment variables and flags are text by nature: they are parsed.
    settings = load_settings({"server.port": "3002"}, env={"KICHAT_RELAY_LINGER": "1.5"})
    assert (settings.server.port, settings.relay.linger) == (3002, 1.5)


def test_numbers_in_messages_are_written_as_in_toml() -> None:
    problems = problems_of(
        {"limits.rest_per_minute": 0, "socketio.outbound_buffer_limit": 1, "relay.linger": -1}
    )
    assert sorted(problems) == [
        "limits.rest_per_minute (command line): must be between 1 and 1000000, got 0",
        "relay.linger (command line): must be between 0 and 3600, got -1.0",
        "socketio.outbound_buffer_limit (command line): must be between 65536 and 1073741824,"
        " got 1",
    ]


def test_settings_text_lists_aliases_and_toml_defaults() -> None:
    text = render_settings_text()
    lines = text.splitlines()
    docs = describe_settings()
    assert len(lines) == 2 * len(docs)
    for doc, line, help_line in zip(docs, lines[::2], lines[1::2], strict=True):
        env = ", ".join((doc.env, *doc.aliases))
        head, _, literal = line.partition(" default ")
        assert head.rstrip().split(None, 1) == [doc.name, env], line
        assert literal.endswith(f" ({doc.type})"), line
        value = literal.removesuffix(f" ({doc.type})")
        # The default is written as it is written in a TOML file.
        parsed = tomllib.loads(f"x = {value}")["x"]
        expected = doc.default
        if isinstance(expected, Mapping):
            expected = dict(expected)
        elif isinstance(expected, tuple):
            expected = list(expected)
        assert parsed == expected, line
        assert help_line == f"    {doc.help}"
    assert "server.port" in text and "KICHAT_SERVER_PORT, KICHAT_PORT" in text
    assert "KICHAT_SERVER_HOST, KICHAT_HOST" in text
    for python_only in ("('", "mappingproxy", "True", "False", "e+0"):
        assert python_only not in text


# Every validation rule, each with a value that breaks it and words its message must contain.
BAD_VALUES = [
    ("server.host", "", "IP address or a host name"),
    ("server.host", "bad host!", "IP address or a host name"),
    ("server.port", 70000, "between 0 and 65535"),
    ("server.port", -1, "between 0 and 65535"),
    ("server.port", "http", "whole number"),
    ("server.port", 80.5, "whole number"),
    ("server.port", True, "whole number"),
    ("server.cors_origins", ("https://ok.example", "ftp://x"), "'ftp://x' is not '*' or an origin"),
    ("server.cors_origins", ("https://a.example/path",), "not '*' or an origin"),
    ("server.cors_origins", "[1, 2]", None),  # a string is a comma list: "[1" is no origin
    ("server.trusted_proxies", ("10.0.0.0/33",), "not an IP address or CIDR"),
    ("server.trusted_proxies", ("proxy.local",), "not an IP address or CIDR"),
    ("server.shutdown_timeout", -1.0, "between 0 and 3600"),
    ("server.socket_send_buffer", -1, "between 0 and"),
    ("server.memory_trim_interval", -1.0, "between 0 and 3600"),
    ("relay.stream_lookup_wait", 61, "between 0 and 60"),
    ("socketio.flush_interval", 2, "between 0 and 1"),
    ("server.shutdown_timeout", "soon", "expected a number"),
    ("server.shutdown_timeout", float("nan"), "finite number"),
    ("server.use_uvloop", "maybe", "boolean"),
    ("server.use_uvloop", 1, "true or false"),
    ("socketio.path", "socket.io", "absolute URL path"),
    ("socketio.path", "/a b/", "absolute URL path"),
    ("socketio.path", "/", "absolute URL path"),
    ("socketio.ping_interval", 0.0, "between 1 and 300"),
    ("socketio.ping_timeout", 0.5, "between 1 and 300"),
    ("socketio.ping_timeout", 301.0, "between 1 and 300"),
    ("socketio.max_payload", 10, "between 1024 and"),
    ("socketio.connect_timeout", 0.0, "between 1 and 600"),
    ("socketio.max_pending_connections", 0, "between 1 and"),
    ("socketio.recovery", "sometimes", "boolean"),
    ("socketio.recovery_window", 0.0, "between 1 and 3600"),
    ("socketio.recovery_buffer_bytes", 1, "between 65536 and"),
    ("socketio.outbound_buffer_limit", 1000, "between 65536 and"),
    ("pusher.url", "https://ws-us2.pusher.com/app/key", "scheme ws/wss"),
    ("pusher.url", "wss://ws-us2.pusher.com/key", "path must be /app/<key>"),
    ("pusher.url", "wss://ws-us2.pusher.com/app/", "path must be /app/<key>"),
    ("pusher.url", "wss:///app/key", "with a host"),
    ("pusher.url", "wss://h:99999/app/key", "bad URL or port"),
    ("pusher.url", "wss://h/app/key?protocol=6", "protocol=7"),
    ("pusher.max_channels_per_connection", 0, "between 1 and 1000"),
    ("pusher.pong_timeout", 0.0, "between 1 and 300"),
    ("pusher.subscribe_timeout", 0.0, "between 0.1 and 300"),
    ("pusher.subscribe_retries", 11, "between 0 and 10"),
    ("pusher.connect_wait", 0, "between 0.1 and 300"),
    ("pusher.backoff_initial", 0.0, "between 0.01 and 300"),
    ("pusher.backoff_max", 0.0, "between 0.01 and 3600"),
    ("pusher.fatal_retry_interval", 0.5, "between 1 and 86400"),
    ("pusher.proxy", "ftp://proxy:21", "proxy URL or empty"),
    ("pusher.proxy", "socks5://proxy:1080", "http(s) proxy URL"),
    ("pusher.headers", {"Bad Name": "x"}, "not a valid HTTP header name"),
    ("pusher.headers", {"X-Ok": "a\r\nInjected: 1"}, "CR, LF or NUL"),
    ("pusher.headers", '{"X": 1}', "table of string values"),
    ("pusher.headers", "[1]", "table"),
    ("pusher.headers", "{not json", "JSON object"),
    ("kick_api.url", "ftp://kick.com", "http(s) base URL"),
    ("kick_api.url", "https://kick.com/?x=1", "without credentials, query or fragment"),
    ("kick_api.url", "https://user:pw@kick.com", "without credentials"),
    ("kick_api.url", "kick.com", "http(s) base URL"),
    ("kick_api.timeout", 0.0, "between 0.1 and 300"),
    ("kick_api.retries", -1, "between 0 and 10"),
    ("kick_api.proxy", "proxy.local:3128", "proxy URL or empty"),
    ("kick_api.headers", {"X": "\0"}, "CR, LF or NUL"),
    ("kick_api.channel_cache_ttl", -1.0, "between 0 and 86400"),
    ("kick_api.not_found_ttl", 1e9, "between 0 and 86400"),
    ("relay.chatroom_channels", (), "at least one channel template"),
    ("relay.chatroom_channels", ("chatrooms.v2",), "{chatroom_id} exactly once"),
    ("relay.chatroom_channels", ("chatrooms.{chatroom_id}", "chatrooms.{chatroom_id}"), "twice"),
    ("relay.chatroom_channels", ("chatrooms.{id}.{chatroom_id}",), "no placeholder other"),
    ("relay.chatroom_channels", ("private-chatroom_{chatroom_id}",), "private/presence"),
    ("relay.chatroom_channels", ("chat rooms.{chatroom_id}",), "Pusher channel name"),
    ("relay.channel_channels", ("channel.{chatroom_id}",), "{channel_id} exactly once"),
    ("relay.linger", -0.1, "between 0 and 3600"),
    ("relay.dedupe_window", 3601.0, "between 0 and 3600"),
    ("limits.rest_per_minute", 0, "between 1 and"),
    ("limits.connections_per_ip", 0, "between 1 and"),
    ("limits.pending_connections_per_ip", 0, "between 1 and"),
    ("limits.detached_per_ip", 0, "between 1 and"),
    ("limits.subscriptions_per_client", 0, "between 1 and"),
    ("limits.subscribe_rate", 0, "between 1 and"),
    ("limits.api_keys", ("has space",), "printable ASCII"),
    ("limits.api_keys", [1, 2], "list of strings"),
    ("server.workers", "0", "number of worker processes (1-64) or auto"),
    ("server.workers", "many", "number of worker processes (1-64) or auto"),
    ("cluster.redis_url", "http://localhost:6379", "redis:// or rediss://"),
    ("cluster.redis_url", "redis://:hunter2@h:6379/db", "database number"),
    ("cluster.node_id", "Node-1", "1-16 of a-z 0-9"),
    ("cluster.key_prefix", "has space", "printable characters without spaces"),
    ("cluster.lease_ttl", 0.5, "between 1 and 300"),
    ("cluster.node_timeout", 0.1, "between 0.3 and 60"),
    ("cluster.owner_check_interval", 0.0, "between 0.05 and 60"),
    ("cluster.history_size", 10, "between 100 and"),
    ("cluster.command_timeout", 0.0, "between 0.1 and 60"),
    ("cluster.backfill_window", -1.0, "between 0 and 3600"),
    ("log.level", "verbose", "must be one of debug, info"),
    ("log.format", "xml", "must be one of text, json"),
    ("pages.emote_url", "https://a/{id}/{id}", "{id} exactly once"),
    ("pages.emote_url", "https://a/{name}", "{id} exactly once"),
    ("pages.emote_url", "ftp://a/{id}", "http(s) URL"),
    ("pages.emote_url", "https:///{id}", "with a host"),
    ("pages.emote_url", "https://a/{id}'onerror", "without credentials, quotes or spaces"),
    ("pages.socketio_client_dir", "/nonexistent", "holding socket.io.min.js"),
]


@pytest.mark.parametrize(("name", "value", "fragment"), BAD_VALUES)
def test_every_rule_has_a_message(name: str, value: object, fragment: str | None) -> None:
    [problem] = problems_of({name: value})
    assert problem.startswith(f"{name} (command line): ")
    if fragment is not None:
        assert fragment in problem


def test_every_setting_has_at_least_one_bad_value_tested() -> None:
    tested = {name for name, _, _ in BAD_VALUES}
    assert tested == {doc.name for doc in describe_settings()}


def test_many_problems_at_once_each_with_its_source(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[server]\nport = 'x'\n[socketio]\nping_timeout = 0\n")
    env = {"KICHAT_LOG_FORMAT": "xml", "KICHAT_NOPE": "1", "KICHAT_SERVER_HOST": "a b"}
    flags = {"pusher.url": "http://x/app/k", "kick_api.retries": 99}
    problems = problems_of(flags, env=env, config_path=path)
    assert len(problems) == 7, problems
    where = {
        "server.port (file": "whole number",
        "socketio.ping_timeout (file": "between 1 and 300",
        "log.format (env KICHAT_LOG_FORMAT)": "text, json",
        "env KICHAT_NOPE": "unknown setting",
        "server.host (env KICHAT_SERVER_HOST)": "host name",
        "pusher.url (command line)": "ws/wss",
        "kick_api.retries (command line)": "between 0 and 10",
    }
    for prefix, fragment in where.items():
        assert any(p.startswith(prefix) and fragment in p for p in problems), prefix
    # ConfigError's message carries them all too.
    with pytest.raises(ConfigError) as exc:
        load_settings(flags, env=env, config_path=path)
    assert "kick_api.retries" in str(exc.value)
    assert "KICHAT_NOPE" in str(exc.value)


def test_a_bad_value_is_reported_even_when_a_higher_layer_overrides_it(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[server]\nport = 99999\n")
    [problem] = problems_of({"server.port": 80}, config_path=path)
    assert problem.startswith("server.port (file ")


def test_cross_setting_rules() -> None:
    [problem] = problems_of({"pusher.backoff_initial": 10.0, "pusher.backoff_max": 5.0})
    assert "pusher.backoff_max (command line) must be at least pusher.backoff_initial" in problem
    problems = problems_of(
        {
            "relay.chatroom_channels": "chat_{chatroom_id}",
            "relay.channel_channels": "chat_{channel_id}",
        }
    )
    assert len(problems) == 1
    assert "same Pusher channel" in problems[0]


def test_secrets_never_appear_in_problems() -> None:
    problems = problems_of(
        {
            "limits.api_keys": ("s3cret key",),
            "kick_api.proxy": "ftp://user:hunter2@proxy:21",
            "pusher.proxy": "gopher://tok3n@proxy",
        }
    )
    assert len(problems) == 3
    text = "\n".join(problems)
    for secret in ("s3cret", "hunter2", "tok3n"):
        assert secret not in text
    [problem] = problems_of(env={"KICHAT_KICK_API_HEADERS": '{"Cookie": 12345}'})
    assert "12345" not in problem


def test_validate_settings_built_in_code() -> None:
    settings = Settings(server=ServerSettings(port=70000), kick_api=KickApiSettings(retries=-1))
    problems = validate_settings(settings)
    assert len(problems) == 2
    assert problems[0].startswith("server.port: must be between 0 and 65535")
    assert problems[1].startswith("kick_api.retries:")


def test_settings_are_immutable() -> None:
    settings = load_settings(env={"KICHAT_KICK_API_HEADERS": '{"A": "b"}'})
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.server.port = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        settings.kick_api.headers["A"] = "c"  # type: ignore[index]


def test_describe_settings_covers_every_field() -> None:
    docs = describe_settings()
    names = [doc.name for doc in docs]
    assert len(names) == len(set(names))
    defaults = Settings()
    expected = {
        f"{section.name}.{f.name}"
        for section in dataclasses.fields(Settings)
        for f in dataclasses.fields(getattr(defaults, section.name))
    }
    assert set(names) == expected
    for doc in docs:
        section, key = doc.name.split(".")
        assert doc.env == f"KICHAT_{section.upper()}_{key.upper()}"
        assert doc.help
        assert doc.default == getattr(getattr(defaults, section), key)
        if key.endswith(("_timeout", "_interval", "_ttl", "_window")) or key == "linger":
            assert doc.type == "float (seconds)", doc.name
    by_name = {doc.name: doc for doc in docs}
    assert by_name["server.port"].aliases == ("KICHAT_PORT",)
    assert by_name["server.host"].aliases == ("KICHAT_HOST",)
    assert by_name["kick_api.url"].env == "KICHAT_KICK_API_URL"
    assert by_name["pusher.url"].env == "KICHAT_PUSHER_URL"
    assert by_name["log.level"].env == "KICHAT_LOG_LEVEL"
    assert by_name["socketio.max_payload"].type == "int (bytes)"
    assert by_name["limits.api_keys"].secret


def test_every_documented_env_var_is_accepted() -> None:
    for doc in describe_settings():
        default = doc.default
        if isinstance(default, Mapping):
            value = json.dumps(dict(default))
        elif isinstance(default, tuple):
            value = ",".join(default)
        elif isinstance(default, bool):
            value = "true" if default else "false"
        else:
            value = str(default)
        for var in (doc.env, *doc.aliases):
            assert load_settings(env={var: value}) == Settings(), var


def test_markdown_reference() -> None:
    table = render_settings_markdown()
    lines = table.strip().splitlines()
    assert lines[0] == "| Setting | Type | Default | Environment | Description |"
    assert len(lines) == 2 + len(describe_settings())
    port = next(line for line in lines if line.startswith("| `server.port`"))
    assert "`3000`" in port
    assert "`KICHAT_SERVER_PORT`, `KICHAT_PORT`" in port
    origins = next(line for line in lines if line.startswith("| `server.cors_origins`"))
    assert '`["*"]`' in origins
    assert all(line.count(" | ") == 4 for line in lines[2:])


def test_display_redacts_secrets() -> None:
    settings = load_settings(
        {
            "limits.api_keys": ("key-one-123", "key-two-456"),
            "kick_api.headers": {"Cookie": "session=abc123", "User-Agent": "ua-value"},
            "kick_api.proxy": "http://bob:pa55word@proxy.local:3128",
            "pusher.proxy": "https://tokenonly@10.0.0.1:1080",
            "pusher.headers": {"Origin": "https://kick.com"},
            "cluster.redis_url": "redis://:redispass99@redis.local:6379/0",
        },
        env={},
    )
    shown = settings_for_display(settings)
    text = json.dumps(shown)
    for secret in (
        "key-one-123",
        "key-two-456",
        "abc123",
        "ua-value",
        "pa55word",
        "bob",
        "tokenonly",
        "redispass99",
    ):
        assert secret not in text
    assert shown["limits"]["api_keys"] == ["***", "***"]
    assert shown["kick_api"]["headers"] == {"Cookie": "***", "User-Agent": "***"}
    assert shown["kick_api"]["proxy"] == "http://***@proxy.local:3128"
    assert shown["pusher"]["proxy"] == "https://***@10.0.0.1:1080"
    assert shown["pusher"]["headers"] == {"Origin": "***"}
    assert shown["server"]["port"] == 3000
    assert shown["relay"]["chatroom_channels"] == [
        "chatrooms.{chatroom_id}.v2",
        "chatrooms.{chatroom_id}",
    ]
    assert shown["pusher"]["url"] == KICK_PUSHER_URL
    assert set(shown) == {
        "server", "socketio", "pusher", "kick_api", "relay", "limits", "cluster", "log", "pages",
    }  # fmt: skip


def test_several_workers_need_redis_and_a_short_node_id() -> None:
    assert any("need cluster.redis_url" in p for p in problems_of({"server.workers": "2"}))
    fine = load_settings({"server.workers": "auto", "cluster.redis_url": "redis://h:6379/0"},
                         env={})  # fmt: skip
    assert fine.server.workers == "auto"
    [problem] = problems_of(
        {"server.workers": "2", "cluster.redis_url": "redis://h:6379/0",
         "cluster.node_id": "abcdefghijklmn"}
    )  # fmt: skip
    assert "at most 13 characters" in problem
