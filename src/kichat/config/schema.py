"""The settings themselves: one frozen dataclass per section, every field declared with its
default, help text, check, unit, environment aliases and secrecy (see :func:`~.checks.option`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from kichat.config.checks import (
    KIB,
    MIB,
    between,
    check_api_keys,
    check_api_url,
    check_client_dir,
    check_emote_url,
    check_headers,
    check_host,
    check_key_prefix,
    check_networks,
    check_node_id,
    check_origins,
    check_proxy,
    check_pusher_url,
    check_redis_url,
    check_sio_path,
    check_workers,
    choice,
    option,
    templates,
)
from kichat.kick.events import (
    CHANNEL_PLACEHOLDER,
    CHATROOM_PLACEHOLDER,
    DEFAULT_CHANNEL_CHANNELS,
    DEFAULT_CHATROOM_CHANNELS,
)

KICK_PUSHER_URL = (
    "wss://ws-us2.pusher.com/app/32cbd69e4b950bf97679"
    "?protocol=7&client=js&version=8.4.0&flash=false"
)
KICK_API_URL = "https://kick.com"
KICK_EMOTE_URL = "https://files.kick.com/emotes/{id}/fullsize"


# --- the settings -----------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class ServerSettings:
    """The HTTP server that carries Socket.IO, the REST API, health and metrics."""

    host: str = option(
        "127.0.0.1", "Address to listen on.", check=check_host, aliases=("KICHAT_HOST",)
    )
    port: int = option(
        3000,
        "TCP port to listen on (0 picks a free port, for tests).",
        check=between(0, 65535),
        aliases=("KICHAT_PORT",),
    )
    cors_origins: tuple[str, ...] = option(
        ("*",),
        "Origins allowed by CORS: '*' or origins such as https://example.com.",
        check=check_origins,
    )
    trusted_proxies: tuple[str, ...] = option(
        (),
        "IPs/CIDRs of reverse proxies whose X-Forwarded-For is believed (per-IP limits use it).",
        check=check_networks,
    )
    shutdown_timeout: float = option(
        10.0, "Grace period for clients and upstream on shutdown.", check=between(0, 3600)
    )
    socket_send_buffer: int = option(
        256 * KIB,
        "SO_SNDBUF of client sockets: the kernel memory a client that stops reading can pin on"
        " top of socketio.outbound_buffer_limit (Linux doubles it). 0: the kernel's autotuning,"
        " up to net.ipv4.tcp_wmem's maximum (4 MiB by default).",
        unit="bytes",
        check=between(0, 64 * MIB),
    )
    memory_trim_interval: float = option(
        10.0,
        "How often to check whether freed memory should go back to the OS (glibc's"
        " malloc_trim, after bursts such as cut-off clients); 0 never does.",
        check=between(0, 3600),
    )
    use_uvloop: bool = option(True, "Use uvloop's event loop when it is installed.")
    workers: str = option(
        "1",
        "Worker processes serving this address (auto: one per CPU); more than 1 needs"
        " cluster.redis_url, the workers being nodes of one cluster.",
        check=check_workers,
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class SocketIOSettings:
    """The Socket.IO v4 server clients connect to."""

    path: str = option("/socket.io/", "URL path of the Socket.IO endpoint.", check=check_sio_path)
    ping_interval: float = option(
        25.0, "Engine.IO ping interval sent to clients.", check=between(1, 300)
    )
    ping_timeout: float = option(
        20.0,
        "How long a client may take to answer a ping (below 1 s, ordinary stalls on a loaded"
        " machine would drop healthy clients).",
        check=between(1, 300),
    )
    max_payload: int = option(
        1_000_000,
        "Largest packet accepted from a client (its binary attachments included); also what"
        " one client's events may hold while they wait for a busy handler.",
        unit="bytes",
        check=between(1 * KIB, 100 * MIB),
    )
    connect_timeout: float = option(
        10.0,
        "Time a client has to join a namespace after the handshake; a session that has not"
        " joined one by then is closed (socket.io-client joins at once).",
        check=between(1, 600),
    )
    max_pending_connections: int = option(
        10_000,
        "Sessions that have not joined a namespace yet, all clients together; past it,"
        " handshakes are refused with HTTP 503 (see limits.pending_connections_per_ip).",
        check=between(1, 10_000_000),
    )
    recovery: bool = option(True, "Connection state recovery: replay missed events on reconnect.")
    recovery_window: float = option(
        120.0, "How long a disconnected session can be recovered.", check=between(1, 3600)
    )
    recovery_buffer_bytes: int = option(
        64 * MIB,
        "Memory for events kept for recovery (all sessions together).",
        unit="bytes",
        check=between(64 * KIB, 64 * 1024 * MIB),
    )
    flush_interval: float = option(
        0.005,
        "Delay before queued packets are written, so that packets of several broadcasts leave"
        " in one burst: fewer writes and wake-ups for a few ms of latency (0: next loop turn).",
        check=between(0, 1),
    )
    outbound_buffer_limit: int = option(
        4 * MIB,
        "Unsent bytes the gateway holds for one connection (its queue and its socket's write"
        " buffer) before a slow consumer is cut off; the kernel's send buffer comes on top"
        " (server.socket_send_buffer).",
        unit="bytes",
        check=between(64 * KIB, 1024 * MIB),
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class PusherSettings:
    """The upstream Pusher connections to Kick."""

    url: str = option(
        KICK_PUSHER_URL,
        "Kick's Pusher WebSocket URL (ws/wss, path /app/<key>); Kick may rotate the key.",
        check=check_pusher_url,
        aliases=("KICHAT_PUSHER_URL",),
    )
    max_channels_per_connection: int = option(
        100, "Channels per upstream connection before another is opened.", check=between(1, 1000)
    )
    pong_timeout: float = option(
        30.0, "How long Pusher may take to answer our ping.", check=between(1, 300)
    )
    subscribe_timeout: float = option(
        10.0, "How long to wait for a subscription acknowledgement.", check=between(0.1, 300)
    )
    subscribe_retries: int = option(
        2, "Retries of an unacknowledged subscription.", check=between(0, 10)
    )
    connect_wait: float = option(
        5.0,
        "How long a subscribe waits for an upstream connection when none is up (Kick "
        "unreachable or refusing) before it fails with upstream_unavailable.",
        check=between(0.1, 300),
    )
    backoff_initial: float = option(
        1.0, "First reconnect delay (seconds; doubles, with jitter).", check=between(0.01, 300)
    )
    backoff_max: float = option(
        30.0, "Longest reconnect delay (seconds).", check=between(0.01, 3600)
    )
    fatal_retry_interval: float = option(
        300.0,
        "Retry delay after a fatal Pusher error (4000-4099, e.g. a rotated key).",
        check=between(1, 86400),
    )
    proxy: str = option(
        "",
        "Proxy for the upstream WebSocket (http:// or https:// URL), empty for none.",
        check=check_proxy,
        secret=True,
    )
    headers: Mapping[str, str] = option(
        {},
        "Extra HTTP headers for the upstream WebSocket handshake.",
        check=check_headers,
        secret=True,
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class KickApiSettings:
    """Kick's REST API (channel lookup, chat history, user endpoints)."""

    url: str = option(
        KICK_API_URL,
        "Base URL of Kick's REST API.",
        check=check_api_url,
        aliases=("KICHAT_KICK_API_URL",),
    )
    timeout: float = option(10.0, "Timeout of one request to Kick.", check=between(0.1, 300))
    retries: int = option(2, "Retries of a failed GET (timeouts, 5xx, 429).", check=between(0, 10))
    proxy: str = option(
        "",
        "Proxy for requests to Kick (http:// or https:// URL), empty for none.",
        check=check_proxy,
        secret=True,
    )
    headers: Mapping[str, str] = option(
        {},
        "Extra headers for requests to Kick (e.g. a User-Agent or cookies for Kick's edge).",
        check=check_headers,
        secret=True,
    )
    channel_cache_ttl: float = option(
        300.0, "How long a channel lookup is cached (0 disables).", check=between(0, 86400)
    )
    not_found_ttl: float = option(
        30.0, "How long a 'channel not found' is cached.", check=between(0, 86400)
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class RelaySettings:
    """Which upstream channels a room follows and how events are relayed."""

    chatroom_channels: tuple[str, ...] = option(
        DEFAULT_CHATROOM_CHANNELS,
        "Pusher channels subscribed per chatroom ({chatroom_id} is replaced).",
        check=templates(CHATROOM_PLACEHOLDER, allow_empty=False),
    )
    channel_channels: tuple[str, ...] = option(
        DEFAULT_CHANNEL_CHANNELS,
        "Pusher channels subscribed per channel when its id is known ({channel_id} is replaced).",
        check=templates(CHANNEL_PLACEHOLDER, allow_empty=True),
    )
    linger: float = option(
        5.0,
        "Keep an upstream subscription this long after its last client leaves.",
        check=between(0, 3600),
    )
    dedupe_window: float = option(
        10.0,
        "Drop an event seen again on an alias channel within this window (0 disables).",
        check=between(0, 3600),
    )
    stream_lookup_wait: float = option(
        2.0,
        "How long a subscribe reply waits for the channel lookup stream events need (chat"
        " flows meanwhile; later replies say stream_events_pending).",
        check=between(0, 60),
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class LimitsSettings:
    """Abuse limits, per client IP or per Socket.IO client."""

    rest_per_minute: int = option(
        100, "REST requests per minute per IP.", check=between(1, 1_000_000)
    )
    connections_per_ip: int = option(
        10,
        "Concurrent Socket.IO connections per IP (sessions waiting to be recovered do not count).",
        check=between(1, 1_000_000),
    )
    pending_connections_per_ip: int = option(
        10,
        "Socket.IO sessions per IP that have not joined the namespace yet (a handshake whose"
        " CONNECT has not come, or was refused); past it, handshakes get HTTP 429.",
        check=between(1, 1_000_000),
    )
    detached_per_ip: int = option(
        10,
        "Sessions per IP kept for connection state recovery after their transport dropped;"
        " past it, the oldest ends at once.",
        check=between(1, 1_000_000),
    )
    subscriptions_per_client: int = option(
        50, "Rooms one Socket.IO client may be subscribed to.", check=between(1, 10_000)
    )
    subscribe_rate: int = option(
        20, "subscribe/unsubscribe calls per client per 10 s.", check=between(1, 10_000)
    )
    api_keys: tuple[str, ...] = option(
        (), "If set, clients must present one of these keys.", check=check_api_keys, secret=True
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class ClusterSettings:
    """Cluster mode: several kichat processes sharing one Redis behave as one gateway."""

    redis_url: str = option(
        "",
        "Redis URL (redis://, rediss:// or unix://) shared by every node; empty: one process,"
        " nothing shared (the default).",
        check=check_redis_url,
        aliases=("KICHAT_REDIS_URL",),
        secret=True,
    )
    node_id: str = option(
        "",
        "This node's id, 1-16 of a-z 0-9, unique in the cluster; it starts every session id, so"
        " a reverse proxy can route long-polling by it. Empty: a random one at each start.",
        check=check_node_id,
    )
    key_prefix: str = option(
        "kichat:", "Prefix of every Redis key and channel of this cluster.", check=check_key_prefix
    )
    lease_ttl: float = option(
        10.0,
        "Lifetime of a feed's lease: a node cut off from Redis gives its feeds up after 80 %"
        " of it, and another node takes them at most this long after.",
        check=between(1, 300),
    )
    node_timeout: float = option(
        1.5,
        "A node that has not refreshed its heartbeat in Redis for this long counts as dead, and"
        " the feeds it owned are taken over (it beats three times per period).",
        check=between(0.3, 60),
    )
    owner_check_interval: float = option(
        1.0,
        "How often a node checks that the feeds its clients read have a live owner (a killed"
        " owner is replaced within about this long).",
        check=between(0.05, 60),
    )
    history_size: int = option(
        10_000,
        "Most publications kept per feed for recovery (they are also trimmed by the recovery"
        " window).",
        check=between(100, 10_000_000),
    )
    command_timeout: float = option(
        2.0, "Timeout of one Redis command or connection attempt.", check=between(0.1, 60)
    )
    backfill_window: float = option(
        30.0,
        "After a takeover, chat from Kick's history this recent (and not yet published) is"
        " published to fill the gap.",
        check=between(0, 3600),
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class LogSettings:
    """Logging."""

    level: str = option(
        "info",
        "Log level: debug, info, warning, error or critical (any case).",
        check=choice("debug", "info", "warning", "error", "critical"),
        aliases=("KICHAT_LOG_LEVEL",),
    )
    format: str = option("text", "Log line format: text or json.", check=choice("text", "json"))


@dataclass(frozen=True, kw_only=True, slots=True)
class PagesSettings:
    """The status page at / and the chat overlay at /overlay/{channelName}."""

    emote_url: str = option(
        KICK_EMOTE_URL,
        "Image URL of a Kick emote in the overlay ({id} is replaced); empty shows emote names.",
        check=check_emote_url,
    )
    socketio_client_dir: str = option(
        "",
        "Directory of socket.io-client's dist/ files served at <socketio.path>socket.io.js"
        " (empty: the copy `make assets` installs in the package).",
        check=check_client_dir,
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class Settings:
    """All settings. ``Settings()`` is the default configuration."""

    server: ServerSettings = field(default_factory=ServerSettings)
    socketio: SocketIOSettings = field(default_factory=SocketIOSettings)
    pusher: PusherSettings = field(default_factory=PusherSettings)
    kick_api: KickApiSettings = field(default_factory=KickApiSettings)
    relay: RelaySettings = field(default_factory=RelaySettings)
    limits: LimitsSettings = field(default_factory=LimitsSettings)
    cluster: ClusterSettings = field(default_factory=ClusterSettings)
    log: LogSettings = field(default_factory=LogSettings)
    pages: PagesSettings = field(default_factory=PagesSettings)
