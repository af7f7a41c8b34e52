"""kichat: a self-hostable gateway from kick.com's Pusher chat to Socket.IO v4."""

__version__ = "0.1.0"
