"""A Socket.IO v4 server for fan-out, with no knowledge of Kick (see :mod:`kichat.sio.server`)."""

from kichat.sio.connection import Connection
from kichat.sio.errors import ConnectRefused, ParseError, SioError
from kichat.sio.namespace import SESSION_MOVED, Ack, Namespace, Socket
from kichat.sio.server import Server
from kichat.sio.store import SessionStore

__all__ = [
    "SESSION_MOVED",
    "Ack",
    "ConnectRefused",
    "Connection",
    "Namespace",
    "ParseError",
    "Server",
    "SessionStore",
    "SioError",
    "Socket",
]
