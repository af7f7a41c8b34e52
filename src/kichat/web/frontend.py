"""Everything a request goes through before its handler, on the gateway's one port.

Order: Socket.IO requests go straight to the Socket.IO server (it applies its own CORS and
Engine.IO rules), except the client script (``/socket.io/socket.io.js``), a route like the
pages. Other requests are routed; CORS preflights are answered; routes marked
``limited`` (the REST API) then pass the per-IP rate limit (429 with ``Retry-After``) and, when
API keys are configured, the key check (401); health and metrics endpoints are not limited so
probes and scrapers always get through. Every response is counted by route name and status.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from kichat.http import Request, Response
from kichat.limits import ApiKeys, Network, RateLimiter, client_ip
from kichat.observability import WebStats
from kichat.web.router import Result, Route, Router

# On these endpoints Authorization carries the caller's Kick session, forwarded to Kick; the
# gateway's own API key must then come in X-API-Key.
_FORWARDING_ROUTES = frozenset({"followed", "livestreams"})


class Frontend:
    def __init__(
        self,
        router: Router,
        *,
        rest_per_minute: int,
        api_keys: ApiKeys,
        cors_origins: Iterable[str],
        trusted_proxies: tuple[Network, ...],
        stats: WebStats,
    ) -> None:
        self.router = router
        self.limiter = RateLimiter(rest_per_minute, 60.0)
        self.api_keys = api_keys
        self.cors_origins = frozenset(cors_origins)
        self.trusted_proxies = trusted_proxies
        self.stats = stats

    async def __call__(self, request: Request) -> Result:
        for prefix, handler in self.router.prefixes:
            if (
                request.path.startswith(prefix) or request.path + "/" == prefix
            ) and request.path not in self.router.carved:
                return await handler(request)
        cors = self._cors(request.headers.get("origin"))
        route, params, path_exists = self.router.match(
            "GET" if request.method == "OPTIONS" else request.method, request.path
        )
        if request.method == "OPTIONS" and (route is not None or path_exists):
            return self._count("preflight", self._preflight(request, cors))
        if route is None:
            if path_exists:
                resp = Response.error(
                    405, "method_not_allowed", f"{request.method} not allowed here"
                )
                resp.headers.append(("Allow", ", ".join(self.router.allowed(request.path))))
            else:
                resp = Response.error(404, "not_found", f"no route for {request.path[:100]}")
            return self._count("unmatched", _with(resp, cors))
        if route.limited:
            refusal = self._admit(request, route)
            if refusal is not None:
                return self._count(route.name, _with(refusal, cors))
        result = await route.handler(request, params)
        if isinstance(result, Response):
            return self._count(route.name, _with(result, cors))
        return result

    def _admit(self, request: Request, route: Route) -> Response | None:
        ip = client_ip(request.peer, request.headers.get("x-forwarded-for"), self.trusted_proxies)
        wait = self.limiter.hit(ip)
        if wait:
            self.stats.rate_limited["rest"] += 1
            seconds = max(1, math.ceil(wait))
            resp = Response.error(
                429,
                "rate_limited",
                f"rate limit: {self.limiter.rate} requests per minute per address (bursts up to "
                f"{self.limiter.rate}); retry in {seconds} s",
                retry_after=seconds,
            )
            resp.headers.append(("Retry-After", str(seconds)))
            return resp
        if self.api_keys.required and not self.api_keys.accepts(_api_key(request, route)):
            self.stats.unauthorized += 1
            resp = Response.error(
                401,
                "unauthorized",
                "pass a valid API key in X-API-Key"
                + ("" if route.name in _FORWARDING_ROUTES else " or Authorization: Bearer <key>"),
            )
            resp.headers.append(("WWW-Authenticate", 'Bearer realm="kichat"'))
            return resp
        return None

    def _cors(self, origin: str | None) -> list[tuple[str, str]]:
        if origin is None:
            return []
        if not ("*" in self.cors_origins or origin in self.cors_origins):
            return [("Vary", "Origin")]  # caches must not reuse another origin's answer
        return [
            ("Access-Control-Allow-Origin", origin),
            ("Access-Control-Expose-Headers", "Retry-After"),
            ("Vary", "Origin"),
        ]

    def _preflight(self, request: Request, cors: list[tuple[str, str]]) -> Response:
        if not any(name == "Access-Control-Allow-Origin" for name, _ in cors):
            return Response.error(403, "origin_not_allowed", "this origin may not call the API")
        headers = [*cors, ("Access-Control-Allow-Methods", "GET, POST, PUT, OPTIONS")]
        requested = request.headers.get("access-control-request-headers")
        if requested:
            headers.append(("Access-Control-Allow-Headers", requested))
        headers.append(("Access-Control-Max-Age", "86400"))
        return Response(204, b"", headers)

    def _count(self, route: str, resp: Response) -> Response:
        self.stats.requests[(route, resp.status)] += 1
        return resp


def _api_key(request: Request, route: Route) -> str | None:
    key = request.headers.get("x-api-key")
    if key is not None:
        return key.strip()
    if route.name in _FORWARDING_ROUTES:
        return None
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def _with(resp: Response, headers: list[tuple[str, str]]) -> Response:
    resp.headers.extend(headers)
    return resp
