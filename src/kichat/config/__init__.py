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

from kichat.config.loading import (
    CONFIG_ENV,
    ENV_PREFIX,
    SettingDoc,
    describe_settings,
    load_settings,
    render_settings_markdown,
    render_settings_text,
    settings_for_display,
    validate_settings,
)
from kichat.config.schema import (
    KICK_API_URL,
    KICK_PUSHER_URL,
    ClusterSettings,
    KickApiSettings,
    LimitsSettings,
    LogSettings,
    PagesSettings,
    PusherSettings,
    RelaySettings,
    ServerSettings,
    Settings,
    SocketIOSettings,
)

__all__ = [
    "CONFIG_ENV",
    "ENV_PREFIX",
    "KICK_API_URL",
    "KICK_PUSHER_URL",
    "ClusterSettings",
    "KickApiSettings",
    "LimitsSettings",
    "LogSettings",
    "PagesSettings",
    "PusherSettings",
    "RelaySettings",
    "ServerSettings",
    "SettingDoc",
    "Settings",
    "SocketIOSettings",
    "describe_settings",
    "load_settings",
    "render_settings_markdown",
    "render_settings_text",
    "settings_for_display",
    "validate_settings",
]
