"""Validation of client-supplied Kick identifiers: nothing invalid may ever reach Kick."""

from __future__ import annotations

import re
from urllib.parse import quote

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kichat.errors import ClientInputError
from kichat.kick.names import parse_channel_id, parse_chatroom_id, parse_slug


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (668, 668),
        ("668", 668),
        ("0668", 668),
        ("1", 1),
        (999_999_999_999, 999_999_999_999),
        ("999999999999", 999_999_999_999),
    ],
)
def test_ids_accepted(value: object, expected: int) -> None:
    assert parse_chatroom_id(value) == expected
    assert parse_channel_id(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        True,
        False,
        668.0,
        "668.0",
        -1,
        "-1",
        "+1",
        " 1",
        "1 ",
        "1\n",
        "",
        "0",
        "000",
        0,
        10**12,
        "1" * 13,
        "\u0661\u0662\u0663",  # Arabic-Indic digits: str.isdigit() says yes
        "\uff11",  # fullwidth 1
        "1e3",
        "0x10",
        "1_000",
        b"668",
        None,
        [668],
        {"id": 668},
    ],
)
def test_ids_refused(value: object) -> None:
    with pytest.raises(ClientInputError) as chat:
        parse_chatroom_id(value)
    assert chat.value.code == "invalid_chatroom_id"
    assert "chatroomId" in chat.value.message
    with pytest.raises(ClientInputError) as chan:
        parse_channel_id(value)
    assert chan.value.code == "invalid_channel_id"


@pytest.mark.parametrize("value", ["xqc", "a", "a" * 64, "x-q_c", "0day", "9-9"])
def test_slugs_accepted(value: str) -> None:
    assert parse_slug(value) == value


def test_slug_is_lowercased() -> None:
    assert parse_slug("XqC") == "xqc"
    assert parse_slug("Moonlit_Fox-2") == "moonlit_fox-2"


@pytest.mark.parametrize(
    "value",
    [
        "",
        "a" * 65,
        "-xqc",
        "_xqc",
        "xqc/../admin",
        "x/q",
        "x\\q",
        "x%2Fq",
        "x.q",
        ".",
        "..",
        "x q",
        "xqc\n",
        "x\tq",
        "x\x00q",
        "x?q=1",
        "x#q",
        "\u212a",  # Kelvin sign: lower() gives an ASCII "k"
        "\u0130",  # dotted capital I: lower() gives "i" + a combining dot
        "caf\u00e9",
        "x\u200bq",  # zero-width space
        668,
        None,
        b"xqc",
        ["xqc"],
    ],
)
def test_slugs_refused(value: object) -> None:
    with pytest.raises(ClientInputError) as exc:
        parse_slug(value)
    assert exc.value.code == "invalid_channel_name"
    assert "channelName" in exc.value.message
    assert exc.value.as_dict()["code"] == "invalid_channel_name"


@pytest.mark.parametrize("parse", [parse_slug, parse_chatroom_id, parse_channel_id])
def test_error_message_does_not_echo_long_values(parse: object) -> None:
    bad = "Z" * 10_000 + "/"
    with pytest.raises(ClientInputError) as exc:
        parse(bad)  # type: ignore[operator]
    message = exc.value.message
    assert "Z" * 41 not in message
    assert len(message) < 300
    assert "str" in message  # says what kind of value it got


def test_error_message_names_the_type_of_non_strings() -> None:
    with pytest.raises(ClientInputError) as exc:
        parse_chatroom_id([1, 2, 3])
    assert "list" in exc.value.message


def test_a_missing_value_is_reported_as_missing() -> None:
    # payload.get("chatroomId") is None when the field is absent: say so, not "got NoneType".
    for parse, code, field in [
        (parse_chatroom_id, "invalid_chatroom_id", "chatroomId"),
        (parse_slug, "invalid_channel_name", "channelName"),
    ]:
        with pytest.raises(ClientInputError) as exc:
            parse(None)
        assert exc.value.code == code
        assert exc.value.message.startswith(f"{field} is missing (or null)")
        assert "NoneType" not in exc.value.message


_PATH_SAFE = re.compile(r"[A-Za-z0-9_-]+")


def _assert_path_safe(segment: str) -> None:
    assert _PATH_SAFE.fullmatch(segment)
    assert quote(segment, safe="") == segment
    assert segment not in {".", ".."}
    url = httpx.URL(f"https://kick.com/api/v2/channels/{segment}/messages")
    assert url.host == "kick.com"
    assert url.path == f"/api/v2/channels/{segment}/messages"
    assert not url.query
    assert not url.fragment


@given(st.one_of(st.text(), st.text(alphabet="abcXYZ019_-./%\\ \n\u212a", max_size=70)))
def test_any_accepted_slug_is_a_safe_path_segment(value: str) -> None:
    try:
        slug = parse_slug(value)
    except ClientInputError as exc:
        assert exc.code == "invalid_channel_name"
        return
    _assert_path_safe(slug)
    assert slug == slug.lower()
    assert 1 <= len(slug) <= 64
    assert slug == value.lower()


@given(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}", fullmatch=True))
def test_every_well_formed_slug_is_accepted(value: str) -> None:
    assert parse_slug(value) == value.lower()


@given(
    st.one_of(
        st.integers(),
        st.text(),
        st.text(alphabet="0123456789 +-.e\n\u0661", max_size=14),
        st.booleans(),
        st.floats(),
        st.none(),
    )
)
def test_any_accepted_id_is_a_safe_path_segment(value: object) -> None:
    try:
        number = parse_chatroom_id(value)
    except ClientInputError as exc:
        assert exc.code == "invalid_chatroom_id"
        return
    assert type(number) is int
    assert 1 <= number < 10**12
    _assert_path_safe(str(number))
    assert parse_channel_id(value) == number
