"""schemathesis (from PyPI) against the gateway's own ``/openapi.json``, the simulator as Kick.

For every operation of the document two of schemathesis' phases run, each request sent for
real and judged by all of schemathesis' default checks (no 5xx; status codes, content types,
headers and bodies as documented; schema-valid input accepted, invalid input refused; a 405
with ``Allow`` for methods the document does not list):

* coverage: the deterministic boundary and negative cases schemathesis derives from the
  document (missing and malformed parameters, unexpected methods);
* fuzzing: Hypothesis-generated positive cases for every operation and negative ones where a
  parameter can be invalid, ``MAX_EXAMPLES`` of each, derandomised so that a failure
  reproduces on every run.

Two gateways serve the same document. The simulator implements only Kick's GET endpoints
(it answers 405 to every POST/PUT), so the two forwarded user endpoints are exercised on a
second gateway whose Kick is a recording HTTP server answering 200: against the simulator they
could only ever relay its 405. Nothing else is left out, except what schemathesis itself
skips: the operation that served the document it loaded (``/openapi.json``), which
test_web_ops.py checks directly. The REST rate limit is raised so that the run is not refused.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from kichat.sim import KickSimulator

from web_harness import RecordingKick, gateway, in_thread, recording_kick

MAX_EXAMPLES = 30
NO_LIMIT = {"limits__rest_per_minute": 1_000_000}
# Operations with a parameter that can be invalid (the others have none to fuzz negatively;
# the coverage phase still sends them negative and unexpected-method cases).
NEGATIVE_FUZZED = {
    "GET /api/v2/channels/{channelName}",
    "GET /api/v2/channels/{channelName}/messages",
}
USER_ENDPOINTS = {"POST /api/v2/channels/followed", "PUT /api/v2/user/livestreams"}
EXPECTED = USER_ENDPOINTS | {
    "GET /api/v2/channels/{channelName}",
    "GET /api/v2/channels/{channelName}/messages",
    "GET /healthz",
    "GET /readyz",
    "GET /metrics",
    "GET /stats",
    "GET /routes",
}
FORWARDABLE = {
    "host", "accept", "accept-encoding", "accept-language", "user-agent", "connection",
    "cookie", "authorization", "content-length",
}  # fmt: skip


@asynccontextmanager
async def world() -> AsyncIterator[tuple[KickSimulator, RecordingKick, str, str]]:
    async with (
        KickSimulator(port=0, seed=11) as sim,
        recording_kick(body=b'{"data":[]}') as kick,
        gateway(sim, **NO_LIMIT) as gw,
        gateway(sim, api_url=kick.url, **NO_LIMIT) as user_gw,
    ):
        yield sim, kick, gw.url, user_gw.url


def fuzz(operation: Any, mode: GenerationMode, base_url: str) -> None:
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        case.call_and_validate(base_url=base_url, timeout=10)

    run()


def test_schemathesis_finds_no_server_error_and_no_schema_violation() -> None:
    with in_thread(world) as (sim, kick, url, user_url):
        schema = schemathesis.openapi.from_url(
            f"{url}/openapi.json", config=schemathesis.Config.from_dict({})
        )
        schema.validate()
        operations = [result.ok() for result in schema.get_all_operations()]
        assert {op.label for op in operations} == EXPECTED
        for operation in operations:
            base = user_url if operation.label in USER_ENDPOINTS else url
            cases = schema.iter_coverage_cases(
                operation,
                generation_modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
                generation_config=schema.config.generation_for(operation=operation),
            )
            for case in cases:
                case.call_and_validate(base_url=base, timeout=10)
            fuzz(operation, GenerationMode.POSITIVE, base)
            if operation.label in NEGATIVE_FUZZED:
                fuzz(operation, GenerationMode.NEGATIVE, base)
            else:
                # Nothing to make invalid: no parameters, or only headers of any string.
                kinds = {
                    (p.location, p.definition["schema"]["type"])
                    for p in operation.iter_parameters()
                }
                assert kinds <= {("header", "string")}, kinds
        # Both upstreams were really used, and fuzzing never got a header through to Kick
        # that the gateway must not forward.
        assert sum(sim.rest_requests.values()) > 0
        assert kick.requests
        for seen in kick.requests:
            assert set(seen.headers) <= FORWARDABLE, seen.headers
