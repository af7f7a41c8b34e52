"""Sessions that survive a transport drop, a node restart or a node's death: the relay's
:class:`kichat.sio.SessionStore`, on the broker.

A session's **record** says what a client had: its socket id, the rooms it subscribed to and,
for every topic feeding them, the position from which it received that topic
(``positions``). Records are written to the broker whenever they change (coalesced, in
order, by one writer task), as *live* while the client is connected here, so that even a node
killed without warning leaves them behind for the recovery window.

A client that reconnects (anywhere) sends its session id and the offset of the last event it
processed, ``"<epoch>.<position>"``. Positions are one counter for all topics and every node
delivers in position order, so that offset says how far the client got in *each* of its topics.
:meth:`RelaySessions.restore` takes the record (exactly one node can), puts the socket back into
its rooms (subscribing here what is needed), reads every topic's publications after
``max(its position, the offset)`` from the broker and sends them, then what arrived meanwhile:
nothing twice, nothing skipped. If the history no longer reaches back that far, or the epoch
changed (Redis lost its data), the restore fails and the client gets a new session
(``recovered: false``), never a silent gap.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

import orjson

from kichat.broker import Broker
from kichat.errors import BrokerUnavailable, UpstreamError
from kichat.relay.gateway import Gateway
from kichat.relay.registry import Registry, RoomKey
from kichat.relay.render import format_offset, parse_offset
from kichat.sio import SESSION_MOVED, Connection, ConnectRefused, Namespace, Socket
from kichat.sio.connection import FORCED_CLOSE, SERVER_SHUTDOWN

log = logging.getLogger("kichat.relay")

POSITIONS = "positions"  # key of a socket's topic -> position map in ``Socket.data``
RESTORE_FAILED = "recovery failed"
_MAX_RECORD = 64 * 1024


@dataclass(frozen=True, slots=True)
class SessionRecord:
    sid: str
    epoch: str
    keys: tuple[RoomKey, ...]
    positions: dict[str, int]

    def dumps(self) -> bytes:
        doc = {
            "v": 1,
            "sid": self.sid,
            "epoch": self.epoch,
            "keys": [[k.chatroom_id, k.slug] for k in self.keys],
            "pos": self.positions,
        }
        # A copy: orjson's result keeps a 4 KiB allocation whatever its length, and a record
        # lives as long as its session (measured: 4 KiB per client otherwise).
        return bytes(memoryview(orjson.dumps(doc)))

    @classmethod
    def loads(cls, raw: bytes) -> SessionRecord | None:
        """The record, or ``None`` if it is not one this version can read."""
        if len(raw) > _MAX_RECORD:
            return None
        try:
            doc = orjson.loads(raw)
            keys = tuple(RoomKey(int(c), str(s)) for c, s in doc["keys"])
            positions = {str(t): int(p) for t, p in doc["pos"].items()}
            return cls(str(doc["sid"]), str(doc["epoch"]), keys, positions)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            return None


class RelaySessions:
    def __init__(
        self,
        broker: Broker,
        gateway: Gateway,
        registry: Registry,
        *,
        stream_wait: float = 2.0,
    ) -> None:
        self.broker = broker
        self.gateway = gateway
        self.registry = registry
        self.stream_wait = stream_wait
        self.nsp: Namespace | None = None
        self._dirty: dict[str, tuple[Socket, bool]] = {}  # pid -> (socket, live)
        self._writer: asyncio.Task[None] | None = None
        self._wrote = asyncio.Event()

    # -- keeping records up to date ------------------------------------------------------------

    def connected(self, sock: Socket) -> None:
        sock.data.setdefault(POSITIONS, {})
        self._mark(sock, live=True)

    def joined(self, sock: Socket, key: RoomKey) -> None:
        """``sock`` receives ``key``'s room from now on."""
        positions: dict[str, int] = sock.data.setdefault(POSITIONS, {})
        for topic in self.gateway.topics_of(key):
            positions.setdefault(topic, self.gateway.last_position(topic))
        self._mark(sock, live=True)

    def left(self, sock: Socket) -> None:
        positions: dict[str, int] = sock.data.get(POSITIONS, {})
        keep = {t for key in self.registry.keys_of(sock.sid) for t in self.gateway.topics_of(key)}
        for topic in [t for t in positions if t not in keep]:
            del positions[topic]
        self._mark(sock, live=True)

    def stream_attached(self, key: RoomKey, topic: str, at: int) -> None:
        """A stream topic started feeding ``key``'s room: its members read it from ``at``."""
        nsp = self.nsp
        room = nsp.rooms.get(key.room) if nsp is not None else None
        if room is None:
            return
        for sock in [*room.offsets, *room.plain]:
            sock.data.setdefault(POSITIONS, {}).setdefault(topic, at)
            self._mark(sock, live=sock.conn is not None)

    def closed(self, sock: Socket, reason: str) -> None:
        """``sock`` is gone for good (not when it moved to another node, which has its record)."""
        if sock.pid is None or reason in (SESSION_MOVED, SERVER_SHUTDOWN):
            return  # moved: the other node has the record; shutdown: a node may restore it
        self._dirty.pop(sock.pid, None)
        pid = sock.pid
        self._spawn_write(self._drop(pid))

    def on_detached(self, sock: Socket) -> None:
        self._mark(sock, live=False)

    def on_reset(self) -> None:
        """Redis lost everything: positions of the old epoch mean nothing; write every live
        session again, reading its topics from where they are now."""
        nsp = self.nsp
        if nsp is None:
            return
        for sock in [*nsp.sockets.values(), *nsp.server.detached.values()]:
            positions = sock.data.get(POSITIONS)
            if positions is not None:
                for topic in positions:
                    positions[topic] = 0
                self._mark(sock, live=sock.conn is not None)

    def record_of(self, sock: Socket) -> SessionRecord:
        return SessionRecord(
            sock.sid,
            self.broker.epoch,
            tuple(sorted(self.registry.keys_of(sock.sid), key=lambda k: k.room)),
            dict(sock.data.get(POSITIONS, {})),
        )

    def _mark(self, sock: Socket, *, live: bool) -> None:
        if sock.pid is None:
            return  # a client that opted out of recovery has nothing to restore
        self._dirty[sock.pid] = (sock, live)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write())

    async def _write(self) -> None:
        """Write what changed, latest state per session, in order."""
        while self._dirty:
            batch, self._dirty = self._dirty, {}
            for pid, (sock, live) in batch.items():
                try:
                    await self.broker.save_session(pid, self.record_of(sock).dumps(), live=live)
                except BrokerUnavailable as exc:
                    log.debug("session %s not saved: %s", pid, exc)
            self._wrote.set()
            self._wrote.clear()

    async def _drop(self, pid: str) -> None:
        with contextlib.suppress(BrokerUnavailable):
            await self.broker.drop_session(pid)

    def _spawn_write(self, coro: Any) -> None:
        asyncio.get_running_loop().create_task(coro)

    async def flush(self) -> None:
        """Wait until every change so far is written (shutdown, tests)."""
        while self._writer is not None and not self._writer.done():
            await asyncio.shield(self._writer)

    # -- restoring -----------------------------------------------------------------------------

    async def restore(
        self, nsp: Namespace, conn: Connection, pid: str, offset: object
    ) -> Socket | None:
        if pid in self._dirty:
            await self.flush()  # this node's latest word on the session goes first
        try:
            raw = await self.broker.take_session(pid)
        except BrokerUnavailable as exc:
            log.info("cannot restore a session: %s", exc)
            raw = None
        record = SessionRecord.loads(raw) if raw is not None else None
        after = 0
        if offset is not None:
            parsed = parse_offset(offset)
            after = parsed[1] if parsed is not None and parsed[0] == self.broker.epoch else -1
        if record is None or record.epoch != self.broker.epoch or after < 0:
            self._forget_local(nsp, pid)
            return None
        sock = nsp.revive(conn, pid, record.sid)
        fresh = sock.conn is None and not sock.connected
        if fresh and not await self._rejoin(sock, record):
            self._abandon(nsp, sock, fresh)
            return None
        positions: dict[str, int] = sock.data.setdefault(POSITIONS, {})
        try:
            history = await self.broker.history({t: max(p, after) for t, p in positions.items()})
        except BrokerUnavailable:
            history = None
        if history is None:
            self._abandon(nsp, sock, fresh)
            return None
        epoch = self.broker.epoch
        frames = []
        for pub in history.publications:
            for key, renderer in self.gateway.rooms_fed_by(pub.topic).items():
                if key.room in sock.rooms:
                    frames.append(renderer.frame(pub.payload, format_offset(epoch, pub.position)))
        try:
            attached = nsp.attach(sock, conn, frames, history.upto)
        except ConnectRefused:  # the socket was ended; the client hears why
            if fresh:
                self._forget_rooms(sock)
            raise
        if not attached:
            self._abandon(nsp, sock, fresh)
            return None
        self._mark(sock, live=True)
        log.debug("restored session %s with %d missed packets", sock.sid, len(frames))
        return sock

    async def _rejoin(self, sock: Socket, record: SessionRecord) -> bool:
        """Put a socket restored from another node's record back into its rooms here."""
        sock.data[POSITIONS] = dict(record.positions)
        for key in record.keys:
            self.registry.add(key, sock.sid)
            try:
                await self.gateway.acquire(key)
            except UpstreamError as exc:
                log.info("cannot restore room %s: %s", key.room, exc)
                return False
            sock.join(key.room)
            # Its stream topic too, if it is coming: its publications are part of what it missed.
            await self.gateway.stream_info(key, within=self.stream_wait)
        return True

    def _abandon(self, nsp: Namespace, sock: Socket, fresh: bool) -> None:
        nsp.abandon(sock, RESTORE_FAILED)
        if fresh:
            self._forget_rooms(sock)

    def _forget_rooms(self, sock: Socket) -> None:
        """A socket that never connected here has no disconnect handler to clean up after it."""
        for key in self.registry.remove_all(sock.sid):
            self.gateway.release(key)

    def _forget_local(self, nsp: Namespace, pid: str) -> None:
        """A session that cannot be restored is over, here too."""
        sock = nsp.server.detached.get(pid)
        if sock is not None and sock.nsp is nsp:
            nsp.abandon(sock, RESTORE_FAILED)

    def resync(self, topics: frozenset[str]) -> None:
        """Publications of ``topics`` were lost for this node (its link to Redis was down longer
        than their history reaches): end the sessions reading them, so that their clients learn
        it (they reconnect with ``recovered: false`` and subscribe again) instead of a silent
        gap."""
        nsp = self.nsp
        if nsp is None:
            return
        for topic in topics:
            for key in list(self.gateway.rooms_fed_by(topic)):
                room = nsp.rooms.get(key.room)
                if room is None:
                    continue
                for sock in [*room.offsets, *room.plain]:
                    conn = sock.conn
                    if conn is None:
                        nsp.abandon(sock, RESTORE_FAILED)
                    else:
                        conn.close(FORCED_CLOSE)
        log.warning("ended the sessions of %d feeds with lost events", len(topics))

    def on_session_taken(self, pid: str) -> None:
        self._dirty.pop(pid, None)
        if self.nsp is not None:
            self.nsp.evict(pid)
