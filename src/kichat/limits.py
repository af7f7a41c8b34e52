"""Limits and access checks, as pure data structures (time is passed in or injected).

* :class:`RateLimiter`: a token bucket per key (client IP, socket id), bounded in memory.
* :class:`ConnectionCounter`: concurrent connections per client IP.
* :class:`ApiKeys`: optional API keys, compared in constant time.
* :func:`client_ip`: the client's address, believing ``X-Forwarded-For`` only from proxies
  the operator trusts.
"""

from __future__ import annotations

import hmac
import ipaddress
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class RateLimiter:
    """``rate`` events per ``per`` seconds per key, with bursts up to ``rate``.

    A full bucket is the same as no bucket, so buckets that have refilled are dropped;
    memory is bounded by the keys active within the last ``per`` seconds.
    """

    def __init__(
        self, rate: int, per: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate < 1 or per <= 0:
            raise ValueError("rate must be >= 1 and per > 0")
        self.rate = rate
        self.per = per
        self._refill = rate / per  # tokens per second
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)
        self._next_sweep = clock() + per

    def hit(self, key: str) -> float:
        """Take one token for ``key``. Returns 0.0 if allowed, else seconds until allowed."""
        now = self._clock()
        if now >= self._next_sweep:
            self._sweep(now)
        tokens, at = self._buckets.get(key, (float(self.rate), now))
        tokens = min(float(self.rate), tokens + (now - at) * self._refill)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / self._refill

    def _sweep(self, now: float) -> None:
        self._next_sweep = now + self.per
        full = [
            k for k, (t, at) in self._buckets.items() if t + (now - at) * self._refill >= self.rate
        ]
        for key in full:
            del self._buckets[key]

    def __len__(self) -> int:
        return len(self._buckets)


class ConnectionCounter:
    """Concurrent connections per key, capped at ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._counts: dict[str, int] = {}

    def acquire(self, key: str) -> bool:
        count = self._counts.get(key, 0)
        if count >= self.limit:
            return False
        self._counts[key] = count + 1
        return True

    def release(self, key: str) -> None:
        count = self._counts.get(key, 0) - 1
        if count > 0:
            self._counts[key] = count
        else:
            self._counts.pop(key, None)

    def count(self, key: str) -> int:
        return self._counts.get(key, 0)

    def __len__(self) -> int:
        return len(self._counts)


@dataclass(frozen=True)
class ApiKeys:
    keys: tuple[str, ...] = ()

    @property
    def required(self) -> bool:
        return bool(self.keys)

    def accepts(self, candidate: object) -> bool:
        if not self.keys:
            return True
        if not isinstance(candidate, str) or not candidate:
            return False
        given = candidate.encode()
        # Compare with every key, so timing does not reveal which one (or whether any) matched.
        return bool(sum(hmac.compare_digest(given, k.encode()) for k in self.keys))


def parse_networks(specs: Iterable[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(spec, strict=False) for spec in specs)


def client_ip(peer: str, forwarded_for: str | None, trusted: tuple[Network, ...]) -> str:
    """The client's IP address.

    ``X-Forwarded-For`` is believed only when the direct peer is a trusted proxy. The chain is
    then read from the right, skipping trusted proxies: the first untrusted address is the
    client (whatever a client writes at the left end of the header is not believed).
    """
    if not trusted or not forwarded_for or not _is_trusted(peer, trusted):
        return peer
    hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
    for hop in reversed(hops):
        if not _is_trusted(hop, trusted):
            return hop if _is_ip(hop) else peer
    return hops[0] if hops and _is_ip(hops[0]) else peer


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _is_trusted(address: str, trusted: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in trusted)
