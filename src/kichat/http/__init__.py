"""HTTP/1.1 and WebSocket serving on asyncio protocols (see :mod:`kichat.http.server`)."""

from kichat.http.request import Request
from kichat.http.server import HttpServer, Response
from kichat.http.wsconn import WebSocket, WebSocketHandler, WebSocketUpgrade

__all__ = ["HttpServer", "Request", "Response", "WebSocket", "WebSocketHandler", "WebSocketUpgrade"]
