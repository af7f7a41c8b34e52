"""``kichat check-config`` in cluster mode: the Redis URL is checked, and so is Redis itself."""

from __future__ import annotations

import pytest

from conftest import run_python
from redis_support import free_port, redis_server

pytestmark = pytest.mark.cluster


async def test_check_config_reports_an_unreachable_redis_clearly() -> None:
    url = f"redis://:s3cret@127.0.0.1:{free_port()}/0"
    code, _, err = await run_python(["-m", "kichat", "check-config", "--redis-url", url])
    assert code == 2
    assert "kichat check-config: cannot use Redis:" in err
    assert "Connection refused" in err or "connecting to" in err
    assert "s3cret" not in err and "Traceback" not in err


async def test_check_config_reports_a_reachable_redis_and_its_nodes() -> None:
    with redis_server() as server:
        code, _, err = await run_python(["-m", "kichat", "check-config", "--redis-url", server.url])
        assert code == 0, err
        assert "cluster: Redis 7" in err or "cluster: Redis" in err
        assert "0 node(s) alive under key prefix 'kichat:'" in err
        # Nodes already there with other settings: this node would be refused.
        server.command("HSET", "kichat:meta", "epoch", "e1", "fingerprint", "someone-else")
        code, _, err = await run_python(["-m", "kichat", "check-config", "--redis-url", server.url])
        assert code == 2
        assert "use other settings" in err


async def test_a_bad_redis_url_is_a_configuration_problem() -> None:
    code, _, err = await run_python(
        ["-m", "kichat", "check-config", "--redis-url", "http://user:pw@localhost:6379"]
    )
    assert code == 2
    assert "cluster.redis_url (command line): must be a redis:// or rediss:// URL" in err
    assert "pw@" not in err
