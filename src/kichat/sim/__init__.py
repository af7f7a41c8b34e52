"""A local stand-in for Kick on one port: Pusher protocol 7, Kick's REST endpoints, traffic and
fault injection. Used by the tests, the offline demo and the benchmark; never talks to Kick.

::

    from kichat.sim import KickSimulator, SimChannel

    async with KickSimulator(port=0, activity_timeout=120.0, pong_timeout=30.0, seed=1) as sim:
        sim.pusher_url   # ws://127.0.0.1:<port>/app/<key>?protocol=7&client=js&version=8.4.0&...
        sim.api_url      # http://127.0.0.1:<port>  (Kick REST base URL)
        sim.channel("xqc")   # SimChannel(slug="xqc", channel_id=676, chatroom_id=668, ...)
        await sim.publish("chatrooms.668.v2", "App\\\\Events\\\\ChatMessageEvent", {...})
        await sim.publish_event("App\\\\Events\\\\ChatMessageEvent", "xqc")
        await sim.run_script("xqc"); await sim.run_bench([668], rate=20, duration=10)
        await sim.close_connections(4200); await sim.drop_connections(); sim.ignore_pings(True)
        sim.fail_subscriptions("chatrooms.*", mode="swallow", count=1)
        sim.fail_rest("xqc", status=403, count=1); sim.refuse_connections(2, code=4100)

Modules: :mod:`~kichat.sim.server` (the simulator), :mod:`~kichat.sim.pusher` (the pure Pusher
server protocol), :mod:`~kichat.sim.traffic` (payloads, routes, pacing), :mod:`~kichat.sim.rest`
(REST shapes, history), :mod:`~kichat.sim.faults`, :mod:`~kichat.sim.control` (the HTTP control
API under ``/_sim/``, documented there), :mod:`~kichat.sim.cli` (``kichat simulate``).
"""

from kichat.sim.channels import SimChannel
from kichat.sim.scenarios import BenchStatus, Published
from kichat.sim.server import DEFAULT_APP_KEY, KickSimulator

__all__ = ["DEFAULT_APP_KEY", "BenchStatus", "KickSimulator", "Published", "SimChannel"]
