"""Injected faults as plain data: rules with an optional remaining count. Pure: no I/O.

A rule with ``remaining=None`` applies until cleared; otherwise it applies to the next
``remaining`` matching attempts, then disappears. Rules are checked in the order they were added.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Final, Literal, Protocol, TypeVar, cast

from kichat.errors import ClientInputError

SubscribeMode = Literal["error", "swallow"]
RestStatus = int | Literal["hang", "delay"]
SUBSCRIBE_MODES: Final = ("error", "swallow")
# Close codes a server may send (RFC 6455 §7.4: 1005, 1006 and 1015 never go on the wire).
_SENDABLE_CLOSE: Final = frozenset(range(1000, 1015)) - {1004, 1005, 1006} | frozenset(
    range(3000, 5000)
)


def check_close_code(code: int) -> int:
    if code not in _SENDABLE_CLOSE:
        raise ClientInputError("bad_code", f"{code} is not a close code a server can send")
    return code


def _check_count(count: int | None) -> int | None:
    if count is not None and count < 1:
        raise ClientInputError("bad_count", "count must be >= 1 (or null for 'until cleared')")
    return count


class _Counted(Protocol):
    remaining: int | None


_R = TypeVar("_R", bound=_Counted)


@dataclass
class SubscribeRule:
    pattern: str
    mode: SubscribeMode
    remaining: int | None


@dataclass
class RestRule:
    target: str  # a slug, a numeric channel id, or "*"
    status: RestStatus
    remaining: int | None
    delay: float


@dataclass
class Faults:
    subscribe: list[SubscribeRule] = field(default_factory=list)
    rest: list[RestRule] = field(default_factory=list)
    refuse_remaining: int = 0
    refuse_code: int = 4100

    def add_subscribe(self, pattern: str, mode: str, count: int | None) -> SubscribeRule:
        if mode not in SUBSCRIBE_MODES:
            raise ClientInputError("bad_mode", "mode must be 'error' or 'swallow'")
        if not pattern:
            raise ClientInputError("bad_pattern", "pattern must be a channel name or glob")
        rule = SubscribeRule(pattern, cast(SubscribeMode, mode), _check_count(count))
        self.subscribe.append(rule)
        return rule

    def add_rest(
        self, target: str, status: RestStatus, count: int | None, delay: float
    ) -> RestRule:
        if isinstance(status, bool) or not (
            status in ("hang", "delay") or (isinstance(status, int) and 400 <= status <= 599)
        ):
            raise ClientInputError(
                "bad_status", "status must be 403, 404, 500 (any 4xx/5xx), 'hang' or 'delay'"
            )
        if delay < 0 or (status == "delay" and delay == 0):
            raise ClientInputError("bad_delay", "delay must be >= 0 (and > 0 for status 'delay')")
        if not target:
            raise ClientInputError("bad_slug", "slug must be a channel slug, a channel id or '*'")
        rule = RestRule(target.lower(), status, _check_count(count), delay)
        self.rest.append(rule)
        return rule

    def set_refusals(self, count: int, code: int) -> None:
        if count < 0:
            raise ClientInputError("bad_count", "count must be >= 0")
        self.refuse_remaining = count
        self.refuse_code = check_close_code(code)

    def take_subscribe(self, channel: str) -> SubscribeMode | None:
        for rule in self.subscribe:
            if fnmatch.fnmatchcase(channel, rule.pattern):
                self._consume(self.subscribe, rule)
                return rule.mode
        return None

    def take_rest(self, targets: set[str]) -> RestRule | None:
        for rule in self.rest:
            if rule.target == "*" or rule.target in targets:
                self._consume(self.rest, rule)
                return rule
        return None

    def take_refusal(self) -> int | None:
        if self.refuse_remaining <= 0:
            return None
        self.refuse_remaining -= 1
        return self.refuse_code

    def clear(self) -> None:
        self.subscribe.clear()
        self.rest.clear()
        self.refuse_remaining = 0

    @staticmethod
    def _consume(rules: list[_R], rule: _R) -> None:
        if rule.remaining is None:
            return
        rule.remaining -= 1
        if rule.remaining <= 0:
            rules.remove(rule)
