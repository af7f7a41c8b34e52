"""A TCP relay between a client and a server on loopback, for injecting network faults.

* :meth:`TcpProxy.cut` aborts every relayed connection on both sides at once (an RST each way),
  the way a network failure looks to both ends; the listener stays, so the client reconnects
  through it.
* :meth:`TcpProxy.freeze` stops relaying bytes without closing anything (a silent network:
  only heartbeats can tell); new connections are relayed normally.
* :attr:`TcpProxy.target` can be changed, e.g. to a restarted server on another port.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field


@dataclass
class _Pair:
    client: asyncio.StreamWriter
    server: asyncio.StreamWriter
    frozen: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


class TcpProxy:
    def __init__(self, target_port: int, host: str = "127.0.0.1") -> None:
        self.host = host
        self.target = target_port
        self.accepted = 0
        self._server: asyncio.Server | None = None
        self._pairs: list[_Pair] = []

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def live(self) -> int:
        """Relayed connections currently open."""
        return len(self._pairs)

    async def __aenter__(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, self.host, 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        self.cut()
        await self._server.wait_closed()

    def cut(self) -> int:
        """Abort every relayed connection, both sides; return how many."""
        pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for task in pair.tasks:
                task.cancel()
            pair.client.transport.abort()
            pair.server.transport.abort()
        return len(pairs)

    def freeze(self) -> int:
        """Stop relaying on every current connection (they stay open); return how many."""
        for pair in self._pairs:
            pair.frozen.set()
        return len(self._pairs)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(self.host, self.target)
        except OSError:
            writer.transport.abort()
            return
        pair = _Pair(writer, up_writer)
        self._pairs.append(pair)
        pair.tasks = [
            asyncio.ensure_future(self._pump(reader, up_writer, pair)),
            asyncio.ensure_future(self._pump(up_reader, writer, pair)),
        ]

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, pair: _Pair
    ) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await reader.read(65536):
                if pair.frozen.is_set():
                    await asyncio.Future()  # hold the connection open, relay nothing more
                writer.write(data)
                await writer.drain()
        # One side closed: close the other the same way (half-close is not needed here).
        if pair in self._pairs:
            self._pairs.remove(pair)
            pair.client.transport.abort()
            pair.server.transport.abort()
