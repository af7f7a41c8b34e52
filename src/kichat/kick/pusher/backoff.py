"""Reconnect timing as data: a jittered exponential backoff and the policy that uses it.

Pure like the protocol: the caller passes the time in, nothing here sleeps or reads a clock.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from kichat.errors import ConfigError
from kichat.kick.pusher.protocol import CloseAction

__all__ = ["Backoff", "ReconnectPolicy"]


@dataclass(slots=True)
class Backoff:
    """Exponential backoff with proportional jitter, capped.

    The n-th call to :meth:`next` (from 0) returns ``min(maximum, initial * factor**n)`` scaled
    by a random factor in ``[1 - jitter, 1]``: never above the cap, and a herd of clients that
    lost the server at the same instant comes back spread over the last ``jitter`` of the delay.

    ``dataclasses.replace(policy)`` gives an independent copy with the same settings and a fresh
    attempt count (the pool does that for each connection).
    """

    initial: float = 1.0
    factor: float = 2.0
    maximum: float = 30.0
    jitter: float = 0.25
    rng: random.Random | None = field(default=None, repr=False, compare=False)
    _attempts: int = field(default=0, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        problems = []
        if not self.initial > 0:
            problems.append(f"backoff initial must be > 0, got {self.initial}")
        if not self.factor >= 1:
            problems.append(f"backoff factor must be >= 1, got {self.factor}")
        if not self.maximum >= self.initial:
            problems.append(f"backoff maximum must be >= initial, got {self.maximum}")
        if not 0 <= self.jitter <= 1:
            problems.append(f"backoff jitter must be in [0, 1], got {self.jitter}")
        if problems:
            raise ConfigError(problems)

    @property
    def attempts(self) -> int:
        """How many delays were handed out since the last :meth:`reset`."""
        return self._attempts

    def next(self) -> float:
        """The delay before the next attempt, in seconds."""
        base = min(self.maximum, self.initial * self.factor ** min(self._attempts, 64))
        self._attempts += 1
        rand = (self.rng or random).random()
        return base * (1.0 - self.jitter * rand)

    def reset(self) -> None:
        self._attempts = 0


class ReconnectPolicy:
    """Decides how long to wait before the next connection attempt.

    * The backoff is reset only when the previous connection got ``connection_established`` and
      then stayed up for ``healthy_after`` seconds, so a server that accepts and closes at once
      still backs off.
    * ``IMMEDIATE`` (4200-4299) reconnects without delay once per healthy period; if the server
      repeats it before the connection became healthy, it gets the backoff like anything else.
      That is what keeps a server closing with 4200 in a loop from causing a hot loop.
    * ``BACKOFF`` (4100-4199) waits at least ``min_backoff`` seconds.
    * ``FATAL`` (4000-4099) waits ``fatal_retry_interval``: the configuration is probably wrong,
      but Kick may also have fixed something on its side, so we look again now and then.
    """

    __slots__ = (
        "_established_at",
        "_immediate_allowed",
        "backoff",
        "fatal_retry_interval",
        "healthy_after",
        "min_backoff",
    )

    def __init__(
        self,
        backoff: Backoff,
        *,
        healthy_after: float = 10.0,
        min_backoff: float = 1.0,
        fatal_retry_interval: float = 300.0,
    ) -> None:
        self.backoff = backoff
        self.healthy_after = healthy_after
        self.min_backoff = min_backoff
        self.fatal_retry_interval = fatal_retry_interval
        self._established_at: float | None = None
        self._immediate_allowed = True

    def connected(self, now: float) -> None:
        """The server sent ``connection_established`` at ``now``."""
        self._established_at = now

    def next_delay(self, action: CloseAction, now: float) -> float:
        """The connection ended (or could not be opened) at ``now``: seconds to wait."""
        established_at, self._established_at = self._established_at, None
        if established_at is not None and now - established_at >= self.healthy_after:
            self.backoff.reset()
            self._immediate_allowed = True
        if action is CloseAction.FATAL:
            return self.fatal_retry_interval
        if action is CloseAction.IMMEDIATE and self._immediate_allowed:
            self._immediate_allowed = False
            return 0.0
        delay = self.backoff.next()
        if action is CloseAction.BACKOFF:
            return max(self.min_backoff, delay)
        return delay
