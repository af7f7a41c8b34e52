"""Validation of the Kick identifiers clients send us.

Nothing a client sends reaches Kick (a URL path, a Pusher channel name) without passing through
here first. Each parser either returns a normalised value that is safe to place in a URL path
segment or a Pusher channel name *unescaped*, or raises :class:`~kichat.errors.ClientInputError`
with a stable ``code`` and a message a developer can act on.

Stable error codes: ``invalid_chatroom_id``, ``invalid_channel_id``, ``invalid_channel_name``.
"""

from __future__ import annotations

import re

from kichat.errors import ClientInputError

__all__ = [
    "MAX_ID_DIGITS",
    "MAX_SLUG_LENGTH",
    "parse_channel_id",
    "parse_chatroom_id",
    "parse_slug",
]

MAX_ID_DIGITS = 12
MAX_SLUG_LENGTH = 64

# ASCII classes spelled out: ``\d`` and ``str.isdigit`` accept other scripts' digits, and
# ``fullmatch`` (unlike ``$``) refuses a trailing newline.
_ID_RE = re.compile(rf"[0-9]{{1,{MAX_ID_DIGITS}}}")
_SLUG_RE = re.compile(rf"[A-Za-z0-9][A-Za-z0-9_-]{{0,{MAX_SLUG_LENGTH - 1}}}")
_ID_LIMIT = 10**MAX_ID_DIGITS
_PREVIEW_CHARS = 40


def _preview(value: object) -> str:
    """A short, printable description of a bad value: never more than ~40 characters of it."""
    if isinstance(value, str | bytes | int | float) and not isinstance(value, bool):
        text = repr(value)
        if len(text) > _PREVIEW_CHARS:
            text = text[: _PREVIEW_CHARS - 3] + "..."
        return f"{type(value).__name__} {text}"
    return type(value).__name__


def _parse_id(value: object, code: str, what: str) -> int:
    if value is None:
        raise ClientInputError(code, f'{what} is missing (or null): give the id, e.g. "668"')
    number: int | None = None
    # bool is an int subclass: True must not become chatroom 1.
    if type(value) is int:
        number = value if 0 < value < _ID_LIMIT else None
    elif isinstance(value, str) and _ID_RE.fullmatch(value):
        number = int(value)
    if number is None or number == 0:
        raise ClientInputError(
            code,
            f"{what} must be a positive whole number of 1 to {MAX_ID_DIGITS} digits, as a JSON "
            f"number or a string of digits (no sign, spaces or decimals); got {_preview(value)}",
        )
    return number


def parse_chatroom_id(value: object) -> int:
    """Parse a Kick chatroom id (``chatroom.id`` of the channel lookup) from client input.

    Accepts a JSON integer or a string of ASCII digits, 1 to 12 digits, value at least 1.
    Refuses booleans, floats (even ``668.0``), negative numbers, signs, spaces and non-ASCII
    digits. Zero is refused too: Kick ids start at 1, and ``chatrooms.0.v2`` would only ever
    be silent. Leading zeros are accepted and dropped (``"0668"`` is chatroom 668).

    Raises ``ClientInputError("invalid_chatroom_id", ...)``.
    """
    return _parse_id(value, "invalid_chatroom_id", "chatroomId")


def parse_channel_id(value: object) -> int:
    """Parse a Kick channel id (``id`` of the channel lookup); same rules as chatroom ids.

    Raises ``ClientInputError("invalid_channel_id", ...)``.
    """
    return _parse_id(value, "invalid_channel_id", "channel id")


def parse_slug(value: object) -> str:
    """Parse a Kick channel slug (the ``channelName`` clients send, e.g. ``"xqc"``).

    Returns it in lower case. Accepted: 1 to 64 ASCII letters, digits, ``_`` and ``-``,
    starting with a letter or a digit.

    Why these bounds: Kick usernames are short (a few to ~25 characters, letters, digits and
    underscores; slugs turn ``_`` into ``-``), so 64 leaves room for whatever Kick allows next
    without accepting anything that could change the meaning of the URL path
    ``/api/v2/channels/{slug}`` it is placed in: no ``/``, ``\\``, ``%``, ``.``, ``?``, ``#``,
    whitespace, control characters or non-ASCII (whose lower-casing can even produce ASCII,
    e.g. the Kelvin sign). The check runs on the value *before* lower-casing for that reason.

    Raises ``ClientInputError("invalid_channel_name", ...)``.
    """
    if isinstance(value, str) and _SLUG_RE.fullmatch(value):
        return value.lower()
    if value is None:
        raise ClientInputError(
            "invalid_channel_name", 'channelName is missing (or null): give the slug, e.g. "xqc"'
        )
    raise ClientInputError(
        "invalid_channel_name",
        f"channelName must be a Kick channel slug: 1 to {MAX_SLUG_LENGTH} ASCII letters, digits,"
        f" '_' or '-', starting with a letter or digit (e.g. \"xqc\"); got {_preview(value)}",
    )
