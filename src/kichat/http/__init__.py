"""HTTP/1.1 and WebSocket serving on asyncio protocols (see :mod:`kichat.http.server`)."""

from kichat.http.server import (
    HttpServer,
    Request,
    Response,
    WebSocket,
    WebSocketHandler,
    WebSocketUpgrade,
)

__all__ = ["HttpServer", "Request", "Response", "WebSocket", "WebSocketHandler", "WebSocketUpgrade"]
