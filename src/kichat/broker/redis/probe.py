"""``kichat check-config`` in cluster mode: is the cluster's Redis usable by this node?"""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from kichat.errors import BrokerUnavailable


async def check_redis(url: str, *, prefix: str, fingerprint: str, command_timeout: float) -> str:
    """For ``kichat check-config``: one line about the cluster's Redis, or
    :class:`BrokerUnavailable` saying why it cannot be used."""
    client = aioredis.Redis.from_url(
        url,
        socket_timeout=command_timeout,
        socket_connect_timeout=command_timeout,
        retry=Retry(NoBackoff(), 0),
    )
    try:
        info = await client.info("server")
        stored = await client.hget(f"{prefix}meta", "fingerprint")
        alive = [key async for key in client.scan_iter(match=f"{prefix}alive:*", count=1000)]
    except RedisError as exc:
        raise BrokerUnavailable(f"cannot use Redis: {exc}") from exc
    finally:
        await client.aclose()
    if (
        stored is not None
        and (stored.decode() if isinstance(stored, bytes) else stored) != fingerprint
    ):
        raise BrokerUnavailable(
            f"the nodes already sharing prefix {prefix!r} use other settings (Pusher key, "
            "channel templates or recovery window): use the same, or another key prefix"
        )
    return (
        f"Redis {info.get('redis_version', '?')} reachable; {len(alive)} node(s) alive under "
        f"key prefix {prefix!r}"
    )
