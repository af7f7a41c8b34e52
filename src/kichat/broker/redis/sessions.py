"""Saved sessions in Redis: ``P s:<pid>`` = ``"<node>|<record>"`` with a TTL.

A *live* session (its client is connected to this node) is kept for the recovery window plus a
little after this node was last heard of: its TTL is refreshed with every lease renewal, so a
node killed without warning leaves its sessions restorable for the window. A session whose
client is gone is kept for the window from then. Taking one is a script (``GETDEL``), so exactly
one node gets it, and the node that held it hears so in its inbox.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from kichat.broker.base import BrokerStatus
from kichat.errors import BrokerUnavailable


class SessionKeys:
    def __init__(
        self,
        redis: aioredis.Redis,
        take_script: AsyncScript,
        status: BrokerStatus,
        *,
        prefix: str,
        member: str,
        window: float,
        live_slack: float,
    ) -> None:
        self._redis = redis
        self._take = take_script
        self._status = status
        self.prefix = prefix
        self.member = member
        self.window = window
        self.live_slack = live_slack
        self.live: dict[str, bytes] = {}  # pid -> record, refreshed while its client is here

    def _key(self, pid: str) -> str:
        return f"{self.prefix}s:{pid}"

    def _value(self, record: bytes) -> bytes:
        return self.member.encode() + b"|" + record

    async def save(self, pid: str, record: bytes, *, live: bool) -> None:
        ttl = self.window + (self.live_slack if live else 0)
        if live:
            self.live[pid] = record
        else:
            self.live.pop(pid, None)
        try:
            await self._redis.set(self._key(pid), self._value(record), px=round(ttl * 1000))
        except RedisError as exc:
            raise BrokerUnavailable(f"Redis: {exc}") from exc
        self._status.sessions_saved += 1

    async def refresh(self) -> None:
        """Extend the live sessions' TTLs; write again those Redis lost (a reset)."""
        if not self.live:
            return
        ttl = round((self.window + self.live_slack) * 1000)
        pids = list(self.live)
        async with self._redis.pipeline(transaction=False) as pipe:
            for pid in pids:
                pipe.pexpire(self._key(pid), ttl)
            kept = await pipe.execute()
        missing = [pid for pid, ok in zip(pids, kept, strict=True) if not ok]
        if missing:
            async with self._redis.pipeline(transaction=False) as pipe:
                for pid in missing:
                    record = self.live.get(pid)
                    if record is not None:
                        pipe.set(self._key(pid), self._value(record), px=ttl)
                await pipe.execute()

    async def take(self, pid: str) -> bytes | None:
        try:
            record: Any = await self._take(keys=[], args=[self.prefix, self.member, pid])
        except RedisError as exc:
            raise BrokerUnavailable(f"Redis: {exc}") from exc
        self.live.pop(pid, None)
        if record is None:
            return None
        self._status.sessions_taken += 1
        return bytes(record)

    async def drop(self, pid: str) -> None:
        self.live.pop(pid, None)
        try:
            await self._redis.delete(self._key(pid))
        except RedisError as exc:
            raise BrokerUnavailable(f"Redis: {exc}") from exc

    def forget(self, pid: str) -> None:
        """Another node took the session: stop refreshing it."""
        self.live.pop(pid, None)
