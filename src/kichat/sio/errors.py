"""Errors of :mod:`kichat.sio`, which knows nothing of Kick and keeps its own small tree.

::

    SioError
    ├── ParseError          a client sent a packet that breaks Engine.IO or Socket.IO rules;
    │                       the connection that sent it is closed, nothing else is affected
    ├── ConnectRefused      raised by a namespace's connect handler to refuse a client;
    │                       the client receives CONNECT_ERROR {"message", "data"}
    └── EncodeError         data the application sends cannot be written as a packet
                            (also a ValueError)
"""

from __future__ import annotations

from typing import Any


class SioError(Exception):
    """Base class of the Socket.IO server's errors."""


class ParseError(SioError):
    """A malformed Engine.IO or Socket.IO packet."""


class ConnectRefused(SioError):
    """Refuse a namespace connection; ``message`` and ``data`` reach the client's connect_error."""

    def __init__(self, message: str, data: Any = None) -> None:
        self.message = message
        self.data = data
        super().__init__(message)


class EncodeError(SioError, ValueError):
    """Data given to ``emit`` or an acknowledgement cannot be written as a packet (nested too
    deeply, or containing itself)."""
