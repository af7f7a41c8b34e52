"""kichat.relay.registry: pure refcounts of who wants which (chatroom, slug) key."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from kichat.relay import Registry, RoomKey

XQC = RoomKey(668, "xqc")
FAN = RoomKey(668, "xqc-fan")
FOX = RoomKey(4100123, "moonlitfox")


def test_first_and_last_subscriber_transitions() -> None:
    reg = Registry()
    assert reg.add(XQC, "a") is True
    assert reg.add(XQC, "b") is False
    assert reg.add(XQC, "a") is False  # idempotent
    assert reg.count(XQC) == 2
    assert reg.remove(XQC, "a") is False
    assert reg.remove(XQC, "a") is False  # already gone
    assert reg.remove(XQC, "b") is True
    assert reg.remove(XQC, "b") is False
    assert reg.count(XQC) == 0
    assert len(reg) == 0
    assert reg.keys_of("a") == frozenset()


def test_room_names_keep_slugs_apart() -> None:
    assert XQC.room == "668:xqc"
    assert FAN.room == "668:xqc-fan"
    reg = Registry()
    assert reg.add(XQC, "a") is True
    assert reg.add(FAN, "a") is True  # same chatroom, another slug: another key
    assert reg.keys_of("a") == {XQC, FAN}


def test_remove_all_returns_only_the_keys_it_emptied() -> None:
    reg = Registry()
    reg.add(XQC, "a")
    reg.add(FOX, "a")
    reg.add(FOX, "b")
    assert reg.remove_all("a") == [XQC]
    assert reg.keys_of("a") == frozenset()
    assert reg.count(FOX) == 1
    assert reg.remove_all("a") == []
    assert reg.remove_all("nobody") == []
    assert len(reg) == 1


def test_top_ranks_by_subscribers() -> None:
    reg = Registry()
    for sid in "abc":
        reg.add(FOX, sid)
    reg.add(XQC, "a")
    for sid in "ab":
        reg.add(FAN, sid)
    assert reg.top(2) == [(FOX, 3), (FAN, 2)]
    assert reg.top(10) == [(FOX, 3), (FAN, 2), (XQC, 1)]


KEYS = st.sampled_from([XQC, FAN, FOX])
SIDS = st.sampled_from(["a", "b", "c"])
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("add"), KEYS, SIDS),
        st.tuples(st.just("remove"), KEYS, SIDS),
        st.tuples(st.just("remove_all"), st.none(), SIDS),
    ),
    max_size=40,
)


@given(OPS)
def test_registry_matches_a_model_and_reports_every_transition(ops: list[tuple]) -> None:
    reg = Registry()
    model: dict[RoomKey, set[str]] = {}
    for op, key, sid in ops:
        if op == "add":
            assert reg.add(key, sid) is (not model.get(key))
            model.setdefault(key, set()).add(sid)
        elif op == "remove":
            had = sid in model.get(key, set())
            assert reg.remove(key, sid) is (had and model[key] == {sid})
            model.get(key, set()).discard(sid)
        else:
            emptied = [k for k, sids in model.items() if sids == {sid}]
            assert sorted(reg.remove_all(sid), key=str) == sorted(emptied, key=str)
            for sids in model.values():
                sids.discard(sid)
        model = {k: v for k, v in model.items() if v}
        assert len(reg) == len(model)
        for k in (XQC, FAN, FOX):
            assert reg.count(k) == len(model.get(k, ()))
        for s in "abc":
            assert reg.keys_of(s) == {k for k, v in model.items() if s in v}
