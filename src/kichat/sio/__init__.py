"""A Socket.IO v4 server for fan-out, with no knowledge of Kick (see :mod:`kichat.sio.server`)."""

from kichat.sio.errors import ConnectRefused, ParseError, SioError
from kichat.sio.namespace import Ack, Namespace, Socket
from kichat.sio.server import Server

__all__ = ["Ack", "ConnectRefused", "Namespace", "ParseError", "Server", "SioError", "Socket"]
