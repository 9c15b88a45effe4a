"""The seed's ``WebSocketManager``: sockets, subscriptions, send queues and heartbeats.

Inside a gateway replica the manager holds that replica's sockets. One listener task keeps
a single ``hub.listen`` call in flight with the replica's cursor and fans each returned entry
out to the sockets whose subscriptions match; the frame text was made once by the hub, so a
fan-out to many sockets serialises nothing. The hub sends the replica only the channels its
sockets subscribe to (the replica's reader filter), so a busy job nobody here watches costs
the replica nothing; a listen that was out while the channels changed has its range read
again with the new filter, so a new subscription misses nothing.

Each socket has a bounded send queue drained by its own writer task; a socket whose queue
overflows is closed (it resumes with ``since``) instead of slowing the hub or the other
sockets.

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

from control_plane.core.errors import ControlPlaneError
from control_plane.core.heartbeat import Heartbeat, HeartbeatLimits, Verdict
from control_plane.core.hub_log import (
    TARGET_ALL,
    UNKNOWN_READER,
    ListenResult,
    LogEntry,
    ReaderFilter,
    client_target,
)
from control_plane.core.outbox import PING, Outbox
from control_plane.core.protocol import (
    JOB_CHANNEL_PREFIX,
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
from control_plane.core.routing import SubscriptionIndex

logger = logging.getLogger(__name__)

LISTEN_BATCH = 4096  # entries per hub listen call
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
    send_queue_size: int = 16_384  # frames; above the listen batch, so a burst fits
    heartbeat_interval: float = 15.0  # seconds between server pings
    heartbeat_timeout: float = 45.0  # close when nothing was heard from the client this long
    max_lag: float = 15.0  # a client this far behind (an unanswered ping) is slow
    max_unread_bytes: int = 16 * 1024 * 1024  # sent but not confirmed read: slow past this
    send_window: int = 512 * 1024  # bytes handed to Serve ahead of what the client confirmed
    subscribe_deadline: float = 60.0  # close a socket that never subscribes


CommandRunner = Callable[[JobCommand, str], Awaitable[dict[str, Any]]]
SnapshotSource = Callable[[str], Awaitable[dict[str, Any] | None]]


@dataclass(eq=False)
class ClientConnection:
    client_id: str
    websocket: WebSocket
    outbox: Outbox
    connected_at: float = field(default_factory=time.monotonic)
    beat: Heartbeat = field(default_factory=lambda: Heartbeat(time.monotonic()))
    read_progress: asyncio.Event = field(default_factory=asyncio.Event)
    subscribed: bool = False
    closing: bool = False
    replay_buffer: list[LogEntry] | None = None
    replays_running: int = 0
    broadcasts_replayed: int = 0  # broadcasts up to this seq were replayed already
    draining: bool = False


class WebSocketManager:
    """WebSocket connection management (the seed's class), one per process."""

    def __init__(self, config: SocketConfig | None = None) -> None:
        self.config = config or SocketConfig()
        self.connections: dict[str, ClientConnection] = {}
        self.index = SubscriptionIndex()
        self._hub: Any = None
        self._commands: CommandRunner | None = None
        self._snapshots: SnapshotSource | None = None
        self._listener: asyncio.Task[None] | None = None
        self.epoch: str | None = None
        self.cursor = 0
        self.reader_id = f"gateway-{uuid.uuid4().hex[:12]}"
        self._filter_channels: frozenset[str] = frozenset()
        self._filter_version = 0
        self.received = 0  # entries the hub sent this replica
        self.delivered = 0
        self.dropped_slow = 0

    def configure(
        self,
        config: SocketConfig,
        hub: Any = None,
        commands: CommandRunner | None = None,
        snapshots: SnapshotSource | None = None,
    ) -> None:
        self.config = config
        self._hub = hub
        self._commands = commands
        self._snapshots = snapshots

    def _hub_handle(self) -> Any:
        if self._hub is None:
            from control_plane.actors import runtime

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
        conn = ClientConnection(client_id, websocket, Outbox(self.config.send_queue_size))
        self.connections[client_id] = conn
        self.index.add_client(client_id)
        await self.ensure_listener()
        return conn

    async def disconnect(self, client_id: str, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """Forget a socket and close it (if it is still open)."""
        conn = self.connections.pop(client_id, None)
        self.index.remove_client(client_id)
        if self._channels_changed():
            self._tell_hub_soon()
        if conn is None:
            return
        conn.closing = True
        conn.outbox.close()
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
                result = await self._listen_once(hub)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning("hub listen failed; retrying", exc_info=True)
                await asyncio.sleep(0.5)
                continue
            if result is None:
                continue
            if result.reset:
                # The hub restarted, or this replica fell further behind than the history
                # reaches: its sockets cannot be given what they missed from here. Close
                # them so that they resume with since and hear from the hub what was lost.
                why = "event hub restarted" if result.epoch != self.epoch else "gateway lagged"
                logger.warning("%s (cursor %d, oldest %d)", why, self.cursor, result.oldest)
                self.epoch = result.epoch
                self.cursor = result.head
                await self.close_sockets(CLOSE_RESTARTING, why)
                continue
            self.epoch = result.epoch
            if result.entries:
                self.received += len(result.entries)
                self.deliver(result.entries)
            self.cursor = result.cursor

    async def _listen_once(self, hub: Any) -> ListenResult | None:
        """One filtered listen; None when the hub first had to be told the filter."""
        result: ListenResult = await hub.listen.remote(
            self.epoch, self.cursor, 30.0, LISTEN_BATCH, self.reader_id
        )
        if result.version == UNKNOWN_READER:
            await self._push_filter()
            return None
        while not result.reset and result.version < self._filter_version:
            # Sockets subscribed while the listen was out: read its range again with the
            # channels they need now (and again if they changed once more meanwhile).
            version = self._filter_version
            again: ListenResult = await hub.read_filtered.remote(
                self.epoch, self.cursor, result.cursor, self._wanted()
            )
            result = again._replace(version=version)
        return result

    def _wanted(self) -> ReaderFilter:
        return ReaderFilter(self._filter_channels)

    def _channels_changed(self) -> bool:
        """Whether the channels this replica's sockets want changed (then a new filter
        version is due at the hub)."""
        channels = frozenset(self.index.channels())
        if channels == self._filter_channels:
            return False
        self._filter_channels = channels
        self._filter_version += 1
        return True

    def _tell_hub_soon(self) -> None:
        task = asyncio.get_running_loop().create_task(self._push_filter())
        task.add_done_callback(_log_failure)

    async def _push_filter(self) -> None:
        if self._listener is None:
            return  # the listener tells the hub when it starts
        await self._hub_handle().set_filter.remote(
            self.reader_id, self._wanted(), self._filter_version
        )

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
        if conn.outbox.push(frame):
            self.delivered += 1
            return True
        self._close_slow(conn)
        return False

    def _close_slow(self, conn: ClientConnection) -> None:
        self.dropped_slow += 1
        conn.closing = True
        logger.warning(
            "closing slow client %s: %d frames queued, %d bytes unread, %d pings open",
            conn.client_id,
            len(conn.outbox),
            conn.beat.unread,
            conn.beat.open_pings,
        )
        asyncio.get_running_loop().create_task(
            self.disconnect(conn.client_id, CLOSE_SLOW_CONSUMER, "slow consumer")
        )

    def send_local(self, conn: ClientConnection, frame: dict[str, Any]) -> None:
        """Queue a reply (ack, error, pong, snapshot) for one local socket."""
        if conn.closing:
            return
        if not conn.outbox.push(encode(frame), reply=True):
            self._close_slow(conn)

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
        """Hand queued frames to the socket, at most ``send_window`` bytes ahead of what the
        client confirmed reading (Serve's replica buffers whatever we hand it, unbounded)."""
        ws = conn.websocket
        beat = conn.beat
        window = self.config.send_window
        try:
            while True:
                frame = await conn.outbox.get()
                if frame is None:
                    return
                if frame is PING or beat.since_last_ping > window // 4:
                    await self._ping(conn)
                    if frame is PING:
                        continue
                while beat.unread > window and not conn.closing:
                    conn.read_progress.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(1.0):
                            await conn.read_progress.wait()
                if conn.closing and conn.client_id not in self.connections:
                    return
                assert isinstance(frame, str)
                await ws.send_text(frame)
                beat.sent(len(frame))
        except (WebSocketDisconnect, RuntimeError, OSError):
            return  # the peer is gone; the reader sees the disconnect

    async def _ping(self, conn: ClientConnection) -> None:
        ping_id = conn.beat.next_ping_id()
        text = encode(server_frame("ping", ping_id=ping_id))
        await conn.websocket.send_text(text)
        conn.beat.ping(ping_id, time.monotonic(), len(text))

    async def _heartbeat(self, conn: ClientConnection) -> None:
        cfg = self.config
        limits = HeartbeatLimits(cfg.heartbeat_timeout, cfg.max_lag, cfg.max_unread_bytes)
        while not conn.closing:
            await asyncio.sleep(min(cfg.heartbeat_interval, 1.0 + cfg.subscribe_deadline))
            now = time.monotonic()
            verdict = conn.beat.verdict(now, limits)
            if verdict is Verdict.SLOW:
                self._close_slow(conn)
                return
            if verdict is Verdict.GONE:
                await self.disconnect(conn.client_id, CLOSE_HEARTBEAT_TIMEOUT, verdict.value)
                return
            if not conn.subscribed and now - conn.connected_at > cfg.subscribe_deadline:
                await self.disconnect(conn.client_id, CLOSE_NO_SUBSCRIBE, "no subscribe in time")
                return
            conn.outbox.push(PING, reply=True)

    async def _read(self, conn: ClientConnection) -> None:
        ws = conn.websocket
        pending: set[asyncio.Task[None]] = set()
        try:
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    return
                conn.beat.heard(time.monotonic())
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
        if self.connections.get(conn.client_id) is not conn:
            return  # a socket replaced by a newer one with the same client id
        try:
            if isinstance(msg, Ping):
                self.send_local(conn, server_frame("pong", request_id=msg.id))
            elif isinstance(msg, Pong):
                conn.beat.pong(msg.id, time.monotonic())
                conn.read_progress.set()
            elif isinstance(msg, Subscribe):
                await self.subscribe(conn, msg)
            elif isinstance(msg, Unsubscribe):
                self.index.unsubscribe(conn.client_id, msg.channels)
                if self._channels_changed():
                    self._tell_hub_soon()
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

    async def _send_snapshots(self, conn: ClientConnection, channels: list[str]) -> None:
        """Each ``job:<id>`` subscription first gets a ``job.snapshot`` of that job."""
        if self._snapshots is None:
            return
        for channel in channels:
            if not channel.startswith(JOB_CHANNEL_PREFIX):
                continue
            snap = await self._snapshots(channel[len(JOB_CHANNEL_PREFIX) :])
            if snap is not None:
                frame = server_frame("job.snapshot", **snap)
                frame["channel"] = channel
                self.send_local(conn, frame)

    async def subscribe(self, conn: ClientConnection, msg: Subscribe) -> None:
        """Subscribe; send each job's snapshot, the ack, the replay (with ``since``), then
        live events. Live entries are held back meanwhile and merged by seq: no gap at the
        seam and no entry twice."""
        conn.subscribed = True
        conn.replays_running += 1
        if conn.replay_buffer is None:
            conn.replay_buffer = []
        replayed: list[LogEntry] = []
        try:
            self.index.subscribe(conn.client_id, msg.channels)
            live_from = self.cursor  # what is newer reaches the socket live
            if self._channels_changed():
                await self._push_filter()
            await self._send_snapshots(conn, msg.channels)
            channels = sorted(self.index.channels_of(conn.client_id))
            if msg.since is None:
                reply_ack = ack(msg.id, channels=channels, epoch=self.epoch, seq=live_from)
            else:
                reply = await self._hub_handle().replay.remote(
                    msg.since, msg.channels, msg.epoch, conn.client_id
                )
                # What is newer than this replica's cursor reaches the socket live (held
                # back until the drain), so the replay stops at the cursor: nothing twice.
                upto = self.cursor if reply["epoch"] == self.epoch else reply["head"]
                replayed = [
                    e
                    for e in reply["entries"]
                    if e.seq <= upto
                    and (e.target != TARGET_ALL or e.seq > conn.broadcasts_replayed)
                ]
                conn.broadcasts_replayed = max(conn.broadcasts_replayed, upto)
                reply_ack = ack(
                    msg.id,
                    channels=channels,
                    epoch=reply["epoch"],
                    seq=reply["head"],
                    recovered=reply["recovered"],
                    replayed=len(replayed),
                    oldest=reply["oldest"],
                )
            self.send_local(conn, reply_ack)
        finally:
            conn.replays_running -= 1
            if conn.replay_buffer is None:
                conn.replay_buffer = []
            conn.replay_buffer.extend(replayed)
            if conn.replays_running == 0 and not conn.draining:
                await self._drain_replay(conn)

    async def _drain_replay(self, conn: ClientConnection) -> None:
        """Send the replay and the live entries held back meanwhile, in seq order, each once.

        A replay may be far larger than the send queue, so it waits for room (a client that
        takes nothing for ``heartbeat_timeout`` is slow); live entries keep arriving in the
        buffer meanwhile and go out in the next round.
        """
        conn.draining = True
        sent: set[int] = set()
        try:
            while conn.replay_buffer:
                batch = sorted({e.seq: e for e in conn.replay_buffer}.values())
                conn.replay_buffer = []
                for entry in batch:
                    if entry.seq in sent or conn.closing:
                        continue
                    sent.add(entry.seq)
                    try:
                        async with asyncio.timeout(self.config.heartbeat_timeout):
                            await conn.outbox.put(entry.frame)
                    except TimeoutError:
                        self._close_slow(conn)
                        return
                    self.delivered += 1
                if len(conn.replay_buffer) > 16 * self.config.send_queue_size:
                    self._close_slow(conn)
                    return
        finally:
            conn.replay_buffer = None
            conn.draining = False

    async def command(self, conn: ClientConnection, msg: JobCommand) -> None:
        if self._commands is None:
            raise ControlPlaneError("this process cannot run job commands")
        result = await self._commands(msg, conn.client_id)
        self.send_local(conn, ack(msg.id, job_id=msg.job_id, command=msg.command, **result))

    async def close_sockets(self, code: int, reason: str) -> None:
        for client_id in list(self.connections):
            await self.disconnect(client_id, code, reason)

    async def close_all(
        self, code: int = CLOSE_RESTARTING, reason: str = "server stopping"
    ) -> None:
        await self.close_sockets(code, reason)
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(Exception):  # the hub forgets idle readers anyway
                await asyncio.wait_for(self._hub_handle().drop_reader.remote(self.reader_id), 2.0)

    def stats(self) -> dict[str, Any]:
        return {
            "connections": len(self.connections),
            "received": self.received,
            "delivered": self.delivered,
            "slow_closed": self.dropped_slow,
            "epoch": self.epoch,
            "cursor": self.cursor,
            "channels": len(self._filter_channels),
        }


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.warning("telling the hub this replica's channels failed", exc_info=task.exception())


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
