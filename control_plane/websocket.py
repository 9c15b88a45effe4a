"""The seed's ``WebSocketManager``: sockets, subscriptions, send queues and heartbeats.

Inside a gateway replica the manager holds that replica's sockets. One listener task keeps
a single ``hub.listen`` call in flight with the replica's cursor and fans each returned entry
out to the sockets whose subscriptions match; the frame text was made once by the hub, so a
fan-out to many sockets serialises nothing. Each socket has a bounded send queue drained by
its own writer task; a socket whose queue overflows is closed (it resumes with ``since``)
instead of slowing the hub or the other sockets.

``broadcast`` and ``send_to_client`` publish through the hub, so they work from any process
on the cluster; :func:`get_ws_manager` returns this process's manager.

Close codes (also in the README): 1000 normal; 1009 frame too big; 1011 server error;
1012 replica restarting; 4000 heartbeat timeout; 4001 no subscribe before the deadline;
4008 slow consumer; 4401 unauthorized; 4403 origin refused. Reconnect after 1011, 1012, 4000,
4001 and 4008 (resume with ``since``); don't after 1009, 4401 or 4403 without changing
something first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from control_plane.errors import ControlPlaneError
from control_plane.hub import TARGET_ALL, LogEntry, client_target
from control_plane.protocol import (
    BadFrame,
    ClientMessage,
    JobCommand,
    Ping,
    Pong,
    Subscribe,
    Unsubscribe,
    ack,
    encode,
    error_reply,
    normalize_event,
    parse_client_message,
    server_frame,
)
from control_plane.routing import SubscriptionIndex

logger = logging.getLogger(__name__)

CLOSE_NORMAL = 1000
CLOSE_TOO_BIG = 1009
CLOSE_SERVER_ERROR = 1011
CLOSE_RESTARTING = 1012
CLOSE_HEARTBEAT_TIMEOUT = 4000
CLOSE_NO_SUBSCRIBE = 4001
CLOSE_SLOW_CONSUMER = 4008


@dataclass
class SocketConfig:
    max_frame_bytes: int = 64 * 1024
    send_queue_size: int = 2048
    heartbeat_interval: float = 15.0  # seconds between server pings
    heartbeat_timeout: float = 45.0  # close when nothing was heard from the client this long
    subscribe_deadline: float = 60.0  # close a socket that never subscribes


CommandRunner = Callable[[JobCommand], Awaitable[dict[str, Any]]]


@dataclass(eq=False)
class ClientConnection:
    client_id: str
    websocket: WebSocket
    queue: asyncio.Queue[str | None]
    connected_at: float = field(default_factory=time.monotonic)
    last_heard: float = field(default_factory=time.monotonic)
    subscribed: bool = False
    closing: bool = False
    replay_buffer: list[LogEntry] | None = None
    sent: int = 0


class WebSocketManager:
    """WebSocket connection management (the seed's class), one per process."""

    def __init__(self, config: SocketConfig | None = None) -> None:
        self.config = config or SocketConfig()
        self.connections: dict[str, ClientConnection] = {}
        self.index = SubscriptionIndex()
        self._hub: Any = None
        self._commands: CommandRunner | None = None
        self._listener: asyncio.Task[None] | None = None
        self.epoch: str | None = None
        self.cursor = 0
        self.delivered = 0
        self.dropped_slow = 0

    def configure(
        self, config: SocketConfig, hub: Any = None, commands: CommandRunner | None = None
    ) -> None:
        self.config = config
        self._hub = hub
        self._commands = commands

    def _hub_handle(self) -> Any:
        if self._hub is None:
            from control_plane import runtime

            self._hub = runtime.hub()
        return self._hub

    # --- the seed's API ------------------------------------------------------------------

    async def connect(self, websocket: WebSocket, client_id: str) -> ClientConnection:
        """Accept (if not yet accepted) and register a socket under ``client_id``."""
        if websocket.client_state is WebSocketState.CONNECTING:
            await websocket.accept()
        old = self.connections.get(client_id)
        if old is not None:
            await self.disconnect(client_id, CLOSE_NORMAL, "replaced by a new connection")
        conn = ClientConnection(client_id, websocket, asyncio.Queue(self.config.send_queue_size))
        self.connections[client_id] = conn
        self.index.add_client(client_id)
        await self.ensure_listener()
        return conn

    async def disconnect(self, client_id: str, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """Forget a socket and close it (if it is still open)."""
        conn = self.connections.pop(client_id, None)
        self.index.remove_client(client_id)
        if conn is None:
            return
        conn.closing = True
        with contextlib.suppress(asyncio.QueueFull):
            conn.queue.put_nowait(None)
        if conn.websocket.application_state is WebSocketState.CONNECTED:
            with contextlib.suppress(Exception):
                await conn.websocket.close(code, reason)

    async def broadcast(self, message: dict[str, Any]) -> int:
        """Send an event to every connected client of every replica; returns its seq."""
        event = normalize_event(message)
        seq: int = await self._hub_handle().publish.remote([event], TARGET_ALL)
        return seq

    async def send_to_client(self, client_id: str, message: dict[str, Any]) -> int:
        """Send an event to one client, wherever its socket is; returns its seq."""
        event = normalize_event(message)
        seq: int = await self._hub_handle().publish.remote([event], client_target(client_id))
        return seq

    # --- fan-out -------------------------------------------------------------------------

    async def ensure_listener(self) -> None:
        if self._listener is None or self._listener.done():
            if self.epoch is None:
                self.epoch, self.cursor = await self._hub_handle().head.remote()
            self._listener = asyncio.get_running_loop().create_task(self._listen())

    async def _listen(self) -> None:
        hub = self._hub_handle()
        while True:
            try:
                result = await hub.listen.remote(self.epoch, self.cursor, 30.0)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning("hub listen failed; retrying", exc_info=True)
                await asyncio.sleep(0.5)
                continue
            if result.reset and result.epoch != self.epoch:
                logger.warning("hub epoch changed %s -> %s", self.epoch, result.epoch)
            self.epoch = result.epoch
            if result.entries:
                self.deliver(result.entries)
                self.cursor = result.entries[-1].seq
            else:
                self.cursor = result.head

    def deliver(self, entries: list[LogEntry]) -> None:
        """Queue each entry's frame on the sockets it is for."""
        for entry in entries:
            for client_id in self.index.recipients(entry):
                conn = self.connections.get(client_id)
                if conn is not None:
                    if conn.replay_buffer is not None:
                        conn.replay_buffer.append(entry)
                    else:
                        self._enqueue(conn, entry.frame)

    def _enqueue(self, conn: ClientConnection, frame: str) -> bool:
        if conn.closing:
            return False
        try:
            conn.queue.put_nowait(frame)
            self.delivered += 1
            return True
        except asyncio.QueueFull:
            self.dropped_slow += 1
            conn.closing = True
            logger.warning("closing slow client %s (send queue full)", conn.client_id)
            asyncio.get_running_loop().create_task(
                self.disconnect(conn.client_id, CLOSE_SLOW_CONSUMER, "slow consumer")
            )
            return False

    def send_local(self, conn: ClientConnection, frame: dict[str, Any]) -> None:
        self._enqueue(conn, encode(frame))

    # --- one socket ----------------------------------------------------------------------

    async def serve(self, websocket: WebSocket, client_id: str | None = None) -> None:
        """Run one accepted-or-connecting socket until it closes."""
        client_id = client_id or uuid.uuid4().hex[:16]
        conn = await self.connect(websocket, client_id)
        self.send_local(
            conn,
            server_frame(
                "welcome",
                client_id=client_id,
                epoch=self.epoch,
                seq=self.cursor,
                heartbeat_interval=self.config.heartbeat_interval,
            ),
        )
        try:
            async with asyncio.TaskGroup() as tg:
                reader = tg.create_task(self._read(conn))
                writer = tg.create_task(self._write(conn))
                beat = tg.create_task(self._heartbeat(conn))
                await asyncio.wait({reader, writer, beat}, return_when=asyncio.FIRST_COMPLETED)
                for task in (reader, writer, beat):
                    task.cancel()
        except* WebSocketDisconnect:
            pass
        except* Exception:
            logger.exception("socket %s failed", client_id)
        finally:
            if self.connections.get(client_id) is conn:
                await self.disconnect(client_id)

    async def _write(self, conn: ClientConnection) -> None:
        ws = conn.websocket
        while True:
            frame = await conn.queue.get()
            if frame is None or (conn.closing and conn.client_id not in self.connections):
                return
            try:
                await ws.send_text(frame)
            except (WebSocketDisconnect, RuntimeError, OSError):
                return  # the peer is gone; the reader sees the disconnect
            conn.sent += 1

    async def _heartbeat(self, conn: ClientConnection) -> None:
        cfg = self.config
        while not conn.closing:
            await asyncio.sleep(min(cfg.heartbeat_interval, 1.0 + cfg.subscribe_deadline))
            now = time.monotonic()
            if now - conn.last_heard > cfg.heartbeat_timeout:
                await self.disconnect(conn.client_id, CLOSE_HEARTBEAT_TIMEOUT, "heartbeat timeout")
                return
            if not conn.subscribed and now - conn.connected_at > cfg.subscribe_deadline:
                await self.disconnect(conn.client_id, CLOSE_NO_SUBSCRIBE, "no subscribe in time")
                return
            self.send_local(conn, server_frame("ping"))

    async def _read(self, conn: ClientConnection) -> None:
        ws = conn.websocket
        pending: set[asyncio.Task[None]] = set()
        try:
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    return
                conn.last_heard = time.monotonic()
                text = message.get("text")
                size = _frame_size(text, message.get("bytes"), self.config.max_frame_bytes)
                if size > self.config.max_frame_bytes:
                    await self.disconnect(
                        conn.client_id,
                        CLOSE_TOO_BIG,
                        f"frame of {size} bytes is over the {self.config.max_frame_bytes} limit",
                    )
                    return
                if text is None:
                    self.send_local(
                        conn, error_reply(None, "binary_frame", "send JSON as text frames")
                    )
                    continue
                try:
                    msg = parse_client_message(text)
                except BadFrame as e:
                    self.send_local(conn, error_reply(e.request_id, e.code, e.message))
                    continue
                task = asyncio.get_running_loop().create_task(self._handle(conn, msg))
                pending.add(task)
                task.add_done_callback(pending.discard)
        finally:
            for task in pending:
                task.cancel()

    async def _handle(self, conn: ClientConnection, msg: ClientMessage) -> None:
        try:
            if isinstance(msg, Ping):
                self.send_local(conn, server_frame("pong", request_id=msg.id))
            elif isinstance(msg, Pong):
                pass
            elif isinstance(msg, Subscribe):
                await self.subscribe(conn, msg)
            elif isinstance(msg, Unsubscribe):
                self.index.unsubscribe(conn.client_id, msg.channels)
                self.send_local(
                    conn, ack(msg.id, channels=sorted(self.index.channels_of(conn.client_id)))
                )
            elif isinstance(msg, JobCommand):
                await self.command(conn, msg)
        except asyncio.CancelledError:
            raise
        except ControlPlaneError as e:
            self.send_local(conn, error_reply(msg.id, e.code, e.message))
        except Exception as e:
            logger.exception("request %r failed", msg)
            self.send_local(conn, error_reply(msg.id, "internal_error", f"{type(e).__name__}: {e}"))

    async def subscribe(self, conn: ClientConnection, msg: Subscribe) -> None:
        conn.subscribed = True
        if msg.since is None:
            self.index.subscribe(conn.client_id, msg.channels)
            self.send_local(
                conn,
                ack(
                    msg.id,
                    channels=sorted(self.index.channels_of(conn.client_id)),
                    epoch=self.epoch,
                    seq=self.cursor,
                ),
            )
            return
        # Buffer live entries while the history is read, then merge by seq: no gap at the
        # seam, and no entry twice.
        conn.replay_buffer = conn.replay_buffer if conn.replay_buffer is not None else []
        self.index.subscribe(conn.client_id, msg.channels)
        try:
            reply = await self._hub_handle().replay.remote(msg.since, msg.channels, None, msg.epoch)
        except BaseException:
            self._flush_replay(conn, [])
            raise
        replayed = [e for e in reply["entries"] if e.seq > msg.since]
        self.send_local(
            conn,
            ack(
                msg.id,
                channels=sorted(self.index.channels_of(conn.client_id)),
                epoch=reply["epoch"],
                seq=reply["head"],
                recovered=reply["recovered"],
                replayed=len(replayed),
                oldest=reply["oldest"],
            ),
        )
        self._flush_replay(conn, replayed)

    def _flush_replay(self, conn: ClientConnection, replayed: list[LogEntry]) -> None:
        buffered = conn.replay_buffer or []
        conn.replay_buffer = None
        merged = {e.seq: e for e in replayed}
        for entry in buffered:
            merged.setdefault(entry.seq, entry)
        for seq in sorted(merged):
            self._enqueue(conn, merged[seq].frame)

    async def command(self, conn: ClientConnection, msg: JobCommand) -> None:
        if self._commands is None:
            raise ControlPlaneError("this process cannot run job commands")
        result = await self._commands(msg)
        self.send_local(conn, ack(msg.id, job_id=msg.job_id, command=msg.command, **result))

    async def close_all(
        self, code: int = CLOSE_RESTARTING, reason: str = "server stopping"
    ) -> None:
        for client_id in list(self.connections):
            await self.disconnect(client_id, code, reason)
        if self._listener is not None:
            self._listener.cancel()

    def stats(self) -> dict[str, Any]:
        return {
            "connections": len(self.connections),
            "delivered": self.delivered,
            "slow_closed": self.dropped_slow,
            "epoch": self.epoch,
            "cursor": self.cursor,
        }


def _frame_size(text: str | None, data: bytes | None, limit: int) -> int:
    """Bytes in a frame; encodes text only when its length alone cannot settle the limit."""
    if text is None:
        return len(data or b"")
    return len(text.encode()) if len(text) * 4 > limit else len(text)


_manager: WebSocketManager | None = None


def get_ws_manager() -> WebSocketManager:
    """This process's :class:`WebSocketManager` (created on first use)."""
    global _manager
    if _manager is None:
        _manager = WebSocketManager()
    return _manager
