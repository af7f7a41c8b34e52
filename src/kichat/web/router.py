"""Routing for the gateway's one port: Socket.IO, the REST API, health, metrics.

Patterns are literal segments and ``{name}`` parameters; a parameter matches one raw path
segment (still percent-encoded: handlers decode and validate it, so ``%2F`` can never turn
into a path separator). Every route has a name used as the ``route`` metric label, so no label
ever carries a slug or another client value.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from kichat.http import Request, Response, WebSocketUpgrade

Result = Response | WebSocketUpgrade
RouteHandler = Callable[[Request, dict[str, str]], Awaitable[Result]]


@dataclass(frozen=True)
class Route:
    method: str
    pattern: str
    name: str
    handler: RouteHandler
    summary: str = ""
    category: str = ""
    limited: bool = True  # per-IP REST rate limit and API keys apply
    public: bool = True  # listed by /routes (and /openapi.json, when ``openapi``)
    openapi: bool = True  # an API endpoint; pages and scripts are listed by /routes only

    @property
    def segments(self) -> tuple[str, ...]:
        return tuple(self.pattern.strip("/").split("/")) if self.pattern != "/" else ()


class Router:
    def __init__(self) -> None:
        self.routes: list[Route] = []
        self.prefixes: list[tuple[str, Callable[[Request], Awaitable[Result]]]] = []
        # Literal route paths inside a mounted prefix (the Socket.IO client script at
        # /socket.io/socket.io.js): routed as routes, not handed to the mount.
        self.carved: frozenset[str] = frozenset()

    def add(self, route: Route) -> None:
        self.routes.append(route)
        self._carve()

    def mount(self, prefix: str, handler: Callable[[Request], Awaitable[Result]]) -> None:
        """Send every request whose path starts with ``prefix`` to ``handler`` as is, but for
        the literal routes added under it."""
        self.prefixes.append((prefix, handler))
        self._carve()

    def _carve(self) -> None:
        self.carved = frozenset(
            r.pattern
            for r in self.routes
            if "{" not in r.pattern and any(r.pattern.startswith(p) for p, _ in self.prefixes)
        )

    def match(self, method: str, path: str) -> tuple[Route | None, dict[str, str], bool]:
        """(route, params, path_exists): a known path with another method gives 405."""
        parts = _parts(path)
        path_exists = False
        for route in self.routes:
            params = _match(route.segments, parts)
            if params is None:
                continue
            path_exists = True
            if route.method == method or (method == "HEAD" and route.method == "GET"):
                return route, params, True
        return None, {}, path_exists

    def allowed(self, path: str) -> list[str]:
        """The methods answered at ``path``, for the ``Allow`` header a 405 must carry."""
        parts = _parts(path)
        methods = {r.method for r in self.routes if _match(r.segments, parts) is not None}
        if not methods:
            return []
        if "GET" in methods:
            methods.add("HEAD")
        return sorted(methods | {"OPTIONS"})  # OPTIONS: CORS preflights of every known path


def _parts(path: str) -> tuple[str, ...]:
    return tuple(path.strip("/").split("/")) if path.strip("/") else ()


def _match(pattern: tuple[str, ...], parts: tuple[str, ...]) -> dict[str, str] | None:
    if len(pattern) != len(parts):
        return None
    params: dict[str, str] = {}
    for want, got in zip(pattern, parts, strict=True):
        if want.startswith("{") and want.endswith("}"):
            if not got:
                return None
            params[want[1:-1]] = got
        elif want != got:
            return None
    return params
