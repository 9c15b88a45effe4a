"""The seed's ``WebSocketManager``: this replica's sockets, who subscribes to what, and the
fan-out from the replica's one hub reader.

The manager owns one :class:`~control_plane.core.reader.HubReader` (started once, when the
gateway replica starts, however many sockets connect at that moment), the
:class:`~control_plane.core.routing.SubscriptionIndex` and a :class:`Session` per socket.
Each entry the reader hands over goes to the sessions whose subscriptions take it; its
frame text was made once, and its wire frame is made once here (``wire.py``), so a fan-out
to many sockets serialises and copies nothing per socket: each socket that can take it now
gets the same bytes written to its transport, without a task. The reader's filter is the
union of the sockets' channels, so the hub sends this replica nothing that no socket here
wants. One watchdog task judges every socket (slow, never subscribed).

What a socket costs, measured with ``python -m benchmarks.socket_cost`` (no Ray; the
gateway's uvicorn, 2,000 sockets at 1 event/s, clients in two processes of their own):

==============================  ===================  ====================
per socket                      before (issue 13)    now
==============================  ===================  ====================
RSS of an idle socket           47 KB                21 KB
Python objects (tracemalloc)    44 KB: 16.6 ours,    about 20 KB: 5 ours,
                                11 FastAPI/starlette 6 uvicorn, 5 asyncio,
                                stack, 6 asyncio,    4 websockets
                                6 uvicorn, 5 ws
tasks of an idle socket         4 (handler, reader,  1 (the handler, which
                                writer, watchdog)    is the read loop)
CPU per event per socket        62 µs                21 µs (19 of it in
                                                     ``deliver``: mostly the
                                                     ``send`` system call)
==============================  ===================  ====================

(On a 2-CPU machine shared with other work, so the CPU figures are rough.)

``broadcast`` and ``send_to_client`` publish through the hub, so they work from any process
on the cluster; :func:`get_ws_manager` returns this process's manager.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from functools import partial
from typing import Any

from starlette.websockets import WebSocket, WebSocketState

from control_plane.core.errors import AuthError, ControlPlaneError, ForbiddenError
from control_plane.core.heartbeat import HeartbeatLimits
from control_plane.core.hub_log import TARGET_ALL, LogEntry, ReaderFilter, client_target
from control_plane.core.owners import CREATED, JobOwners
from control_plane.core.principals import SHARED_ADMIN, Principal
from control_plane.core.protocol import (
    JOB_CHANNEL_PREFIX,
    JOBS_CHANNEL,
    CloseCode,
    JobCommand,
    normalize_event,
    server_frame,
)
from control_plane.core.reader import HubPort, HubReader, Reset
from control_plane.core.routing import SubscriptionIndex
from control_plane.core.shards import join_epochs, wire_cursor
from control_plane.gateway.audit import AuditTrail
from control_plane.gateway.connection_limits import (
    TooManyConnectionsError,
    connection_refusal,
    refuse_connection,
)
from control_plane.gateway.session import CommandRunner, Session, SnapshotSource, SocketConfig
from control_plane.gateway.wire import text_frame
from control_plane.observability import metrics
from control_plane.observability.logs import log_event

logger = logging.getLogger(__name__)

# Owners of the given jobs (None: of every job), from the controller.
OwnerSource = Callable[[list[str] | None], Awaitable[dict[str, str]]]
Authenticator = Callable[[str], Principal]

LISTEN_BATCH = 4096  # entries per hub listen

__all__ = ["SocketConfig", "WebSocketManager", "get_ws_manager"]


class WebSocketManager:
    """WebSocket connection management (the seed's class), one per process."""

    def __init__(self, config: SocketConfig | None = None) -> None:
        self.config = config or SocketConfig()
        self.sessions: dict[str, Session] = {}
        self.index = SubscriptionIndex()
        self.reader: HubReader | None = None  # shard 0's (the only one by default)
        self.readers: list[HubReader] = []  # one per hub shard, feeding the same fan-out
        self._hub_actor: Any = None
        self._commands: CommandRunner | None = None
        self._snapshots: SnapshotSource | None = None
        self._owner_source: OwnerSource | None = None
        self._authenticator: Authenticator | None = None
        self.audit = AuditTrail(None)
        self.owners = JobOwners()
        self._owners_loaded: asyncio.Future[None] | None = None
        self.slow_closed = 0
        self.frames_sent = 0  # frames written to this replica's sockets (for metrics)
        self.closes: Counter[int] = Counter()  # sockets closed, by close code
        self.catch_ups = 0  # times a socket went on from the history when its queue filled
        self._delivered_gone = 0  # frames delivered to sessions that are gone
        self._principals: dict[str, int] = {}  # principal key -> its sockets here
        self._watchdog: asyncio.Task[None] | None = None

    def configure(
        self,
        config: SocketConfig,
        hub: HubPort | Sequence[HubPort],
        hub_actor: Any = None,
        commands: CommandRunner | None = None,
        snapshots: SnapshotSource | None = None,
        owners: OwnerSource | None = None,
        authenticator: Authenticator | None = None,
        audit: AuditTrail | None = None,
    ) -> None:
        """Set up this replica's manager: its hub reader (not started), commands, snapshots,
        and where job owners come from (without: every socket is an admin's). ``hub`` is a
        list with a sharded hub: one reader per shard, each feeding :meth:`deliver`."""
        self.config = config
        self._hub_actor = hub_actor
        self._commands = commands
        self._snapshots = snapshots
        self._owner_source = owners
        self._authenticator = authenticator
        if audit is not None:
            self.audit = audit
        hubs = list(hub) if isinstance(hub, Sequence) else [hub]
        reader_id = f"gateway-{uuid.uuid4().hex[:12]}"
        self.readers = [
            HubReader(
                port,
                reader_id,
                partial(self.deliver, shard=shard),
                self._on_reset,
                wanted=self._wanted(),
                batch=LISTEN_BATCH,
            )
            for shard, port in enumerate(hubs)
        ]
        self.reader = self.readers[0]

    def start(self) -> None:
        """Start the hub readers (synchronous: one reader per shard however many callers)
        and the sockets' watchdog."""
        self._reader()
        for reader in self.readers:
            reader.start()
        if self._watchdog is None:
            self._watchdog = asyncio.get_running_loop().create_task(self._watch())

    @property
    def shards(self) -> int:
        return max(1, len(self.readers))

    def cursors(self) -> list[int]:
        """Each shard reader's cursor: every entry up to it went through :meth:`deliver`."""
        return [reader.cursor for reader in self.readers]

    async def _watch(self) -> None:
        """One task for every socket: close the slow ones (a send blocked for ``max_lag``)
        and those that never subscribe. A socket has no watchdog task of its own."""
        while True:
            cfg = self.config
            limits = HeartbeatLimits(cfg.max_lag, cfg.subscribe_deadline)
            await asyncio.sleep(max(0.05, min(cfg.max_lag, cfg.subscribe_deadline) / 4))
            now = time.monotonic()
            for session in list(self.sessions.values()):
                try:
                    session.check(now, limits)
                except Exception:
                    logger.exception("watching %s failed", session.client_id)

    def _reader(self) -> HubReader:
        if self.reader is None:
            raise ControlPlaneError("this process's WebSocketManager has no hub reader")
        return self.reader

    @property
    def epoch(self) -> str | None:
        """The hub's epoch (with shards, theirs joined: ``core/shards.py``)."""
        return join_epochs([r.epoch for r in self.readers]) if self.readers else None

    def shard_epoch(self, shard: int) -> str | None:
        return self.readers[shard].epoch if self.readers else None

    def _hub_handle(self) -> Any:
        if self._hub_actor is None:
            from control_plane.actors import runtime

            self._hub_actor = runtime.hub()
        return self._hub_actor

    # --- the seed's API ------------------------------------------------------------------

    async def connect(
        self, websocket: WebSocket, client_id: str, principal: Principal = SHARED_ADMIN
    ) -> Session:
        """Accept (if not yet accepted) and register a socket under ``client_id``; a socket
        already registered under it is closed (1000, replaced). Over the connection limits
        (of the replica, of a signed-token principal's sockets) it is refused: an ``error``
        frame, a close with 4029, and :class:`TooManyConnectionsError` raised."""
        principal_key = principal.sub if principal.signed else ""
        self._reader()
        for shard_reader in self.readers:
            await shard_reader.ready()
        epoch = self.epoch
        if websocket.client_state is WebSocketState.CONNECTING:
            await websocket.accept()
        refusal = connection_refusal(
            self.config, self.sessions, client_id, principal_key, self._principals
        )
        if refusal is not None:
            await refuse_connection(websocket, refusal)
            raise TooManyConnectionsError(refusal)
        old = self.sessions.get(client_id)
        if old is not None:
            await self.disconnect(client_id, CloseCode.NORMAL, "replaced by a new connection")
        session = Session(self, websocket, client_id, principal)
        self._principals[principal_key] = self._principals.get(principal_key, 0) + 1
        # No await from here to the welcome: the socket gets every broadcast after this cursor.
        self.sessions[client_id] = session
        self.index.add_client(client_id)
        cursors = self.cursors()
        for seam, cursor in zip(session.seams, cursors, strict=True):
            seam.went_live(cursor)
        sharded = {"shards": self.shards} if self.shards > 1 else {}
        session.reply(
            server_frame(
                "welcome",
                client_id=client_id,
                epoch=epoch,
                seq=wire_cursor(cursors),
                heartbeat_interval=self.config.heartbeat_interval,
                principal=principal.public(),
                **sharded,
            )
        )
        session.watch_expiry()
        return session

    async def disconnect(
        self, client_id: str, code: int = CloseCode.NORMAL, reason: str = ""
    ) -> None:
        """Forget a socket and close it (if it is still open)."""
        session = self.sessions.get(client_id)
        if session is None:
            return
        self.forget(session)
        await session.close(code, reason)

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

    # --- one socket ----------------------------------------------------------------------

    async def serve(
        self,
        websocket: WebSocket,
        client_id: str | None = None,
        principal: Principal = SHARED_ADMIN,
    ) -> None:
        """Run one accepted-or-connecting socket until it closes; a signed token's
        principal counts its sockets against ``max_connections_per_principal``."""
        try:
            session = await self.connect(websocket, client_id or uuid.uuid4().hex[:16], principal)
        except TooManyConnectionsError:
            return
        await session.run()

    def forget(self, session: Session) -> None:
        """Drop a session from the index (if it is still the one under its client id)."""
        if self.sessions.get(session.client_id) is not session:
            return
        del self.sessions[session.client_id]
        left = self._principals.get(session.principal_key, 0) - 1
        if left > 0:
            self._principals[session.principal_key] = left
        else:
            self._principals.pop(session.principal_key, None)
        self._delivered_gone += session.delivered
        self.index.remove_client(session.client_id)
        self._want()

    def _want(self) -> None:
        wanted = self._wanted()
        for reader in self.readers:
            reader.want(wanted)

    def add_channels(self, session: Session, channels: Iterable[str]) -> list[int]:
        """Subscribe ``session``; return each shard reader's cursor: every entry on
        ``channels`` after it reaches the session live, none before it does."""
        self._reader()
        self.index.subscribe(session.client_id, channels)
        self._want()
        return self.cursors()

    def remove_channels(self, session: Session, channels: Iterable[str]) -> None:
        channels = list(channels)
        self.index.unsubscribe(session.client_id, channels)
        for seam, cursor in zip(session.seams, self.cursors(), strict=True):
            seam.unsubscribed(channels, cursor)
        self._want()

    def _wanted(self) -> ReaderFilter:
        channels = frozenset(self.index.channels())
        if self._owner_source is not None:
            # Every job.created, for the owners of the jobs this replica hands out.
            channels |= {JOBS_CHANNEL}
        return ReaderFilter(channels)

    # --- who may see what ------------------------------------------------------------------

    def authenticate(self, token: str) -> Principal:
        """The principal of a token sent on an open socket (``auth``)."""
        if self._authenticator is None:
            raise AuthError("this gateway takes no tokens (--no-auth)")
        return self._authenticator(token)

    async def owners_ready(self) -> None:
        """Know the owner of every job registered so far (once per replica)."""
        if self._owner_source is None:
            return
        if self._owners_loaded is None:
            self._owners_loaded = asyncio.ensure_future(self._load_owners())
        try:
            await asyncio.shield(self._owners_loaded)
        except Exception:
            self._owners_loaded = None  # the next subscribe tries again
            raise

    async def _load_owners(self) -> None:
        assert self._owner_source is not None
        self.owners.learn(await self._owner_source(None))

    async def owner_of(self, job_id: str) -> str | None:
        """The owner of ``job_id``, asking the controller when this replica does not know."""
        await self.owners_ready()
        owner = self.owners.get(job_id)
        if owner is None and self._owner_source is not None:
            self.owners.learn(await self._owner_source([job_id]))
            owner = self.owners.get(job_id)
        return owner

    async def authorize_channels(self, principal: Principal, channels: Iterable[str]) -> None:
        """Raise :class:`ForbiddenError` unless ``principal`` may subscribe to each channel:
        ``audit`` is for admins, a job's channel for those who may see its owner."""
        if principal.is_admin:
            return
        await self.owners_ready()
        for channel in channels:
            if not principal.may_subscribe(channel):
                raise ForbiddenError(f"the {channel!r} channel is for admins")
            if channel.startswith(JOB_CHANNEL_PREFIX):
                job_id = channel[len(JOB_CHANNEL_PREFIX) :]
                if not principal.may_see_owner(await self.owner_of(job_id)):
                    raise ForbiddenError(f"you may not see job {job_id!r}")

    async def authorize_command(self, principal: Principal, job_id: str) -> None:
        """Raise :class:`ForbiddenError` unless ``principal`` may control ``job_id``."""
        if principal.is_admin:
            return
        owner = await self.owner_of(job_id)
        if not principal.may_control(owner):
            if principal.may_see_owner(owner):
                raise ForbiddenError(
                    f"a {principal.role.value} may not control job {job_id!r} (owner {owner})"
                )
            raise ForbiddenError(f"you may not see job {job_id!r}")

    async def replay(
        self,
        since: int,
        channels: list[str],
        epoch: str | None,
        client_id: str,
        upto: int | None = None,
        shard: int = 0,
    ) -> dict[str, Any]:
        """Shard ``shard``'s replay (``EventLog.replay``)."""
        self._reader()
        hub = self.readers[shard].hub
        return await hub.replay(since, channels, epoch, client_id, upto)

    async def snapshot(self, job_id: str) -> dict[str, Any] | None:
        return await self._snapshots(job_id) if self._snapshots is not None else None

    async def run_command(
        self, msg: JobCommand, client_id: str, principal: Principal = SHARED_ADMIN
    ) -> dict[str, Any]:
        if self._commands is None:
            raise ControlPlaneError("this process cannot run job commands")
        await self.authorize_command(principal, msg.job_id)
        return await self._commands(msg, client_id)

    # --- fan-out -------------------------------------------------------------------------

    def deliver(self, entries: list[LogEntry], shard: int = 0) -> None:
        """Hand each entry of shard ``shard`` to the sessions it is for (the shard's hub
        reader calls this)."""
        sessions, recipients = self.sessions, self.index.recipients
        for entry in entries:
            if entry.type == CREATED:
                self.owners.learn_entries((entry,))
            frame: bytes | None = None  # its wire frame, made once for all its sockets
            for client_id in recipients(entry):
                session = sessions.get(client_id)
                if session is not None:
                    if frame is None:
                        frame = text_frame(entry.frame)
                    session.offer(entry, frame, shard)

    async def _on_reset(self, reset: Reset) -> None:
        # The hub restarted, or this replica fell further behind than the history reaches:
        # its sockets cannot be given what they missed from here. Close them so that they
        # resume with since and hear from the hub what was lost.
        await self.close_sockets(CloseCode.RESTARTING, reset.why)

    async def close_sockets(self, code: int, reason: str) -> None:
        sessions = list(self.sessions.values())
        for session in sessions:
            self.forget(session)
        await asyncio.gather(*(s.close(code, reason) for s in sessions), return_exceptions=True)

    async def close_all(
        self, code: int = CloseCode.RESTARTING, reason: str = "server stopping"
    ) -> None:
        """Close every socket and stop the hub reader (the replica is stopping)."""
        await self.close_sockets(code, reason)
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        for reader in self.readers:
            await reader.stop()

    # --- observability -------------------------------------------------------------------

    def command_done(self, msg: JobCommand, client_id: str, outcome: str, seconds: float) -> None:
        """A job command was answered (or failed): one log line, one histogram sample."""
        metrics.recorder().observe("command_seconds", seconds, command=msg.command, outcome=outcome)
        log_event(
            logger,
            "command",
            command=msg.command,
            job_id=msg.job_id,
            client_id=client_id,
            request_id=msg.id,
            outcome=outcome,
            ms=round(seconds * 1000, 1),
        )

    def closed(self, session: Session) -> None:
        """A socket's tasks ended: count its close code, log one line."""
        code = session.close_code or session.peer_code or 1005  # 1005: no code given
        self.closes[code] += 1
        try:
            outcome = CloseCode(code).name.lower()
        except ValueError:
            outcome = "closed_by_client" if session.close_code is None else "closed"
        log_event(
            logger,
            "close",
            client_id=session.client_id,
            job_id=",".join(session.job_ids) or None,
            code=code,
            by="server" if session.close_code is not None else "client",
            outcome=outcome,
            delivered=session.delivered,
        )

    def flush_metrics(self, rec: metrics.Recorder) -> None:
        """This replica's counts to Ray's metrics (``flush_every`` calls it each second)."""
        reader = self._reader()
        replica = reader.reader_id
        lag = sum(max(0, r.head - r.cursor) for r in self.readers)
        rec.set("reader_lag_events", lag, replica=replica)
        rec.set("sockets_open", len(self.sessions), replica=replica)
        rec.flush_count("frames_sent", self.frames_sent)
        rec.flush_counts("socket_closes", "code", {str(c): n for c, n in self.closes.items()})

    def stats(self) -> dict[str, Any]:
        reader = self.reader
        delivered = self._delivered_gone + sum(s.delivered for s in self.sessions.values())
        return {
            "connections": len(self.sessions),
            "received": reader.received if reader is not None else 0,
            "delivered": delivered,
            "slow_closed": self.slow_closed,
            "catch_ups": self.catch_ups,
            "epoch": self.epoch,
            "cursor": wire_cursor(self.cursors()) if self.readers else 0,
            "channels": len(reader.wanted.channels) if reader is not None else 0,
            "reader": reader.stats() if reader is not None else None,
            **({"readers": [r.stats() for r in self.readers]} if self.shards > 1 else {}),
        }


_manager: WebSocketManager | None = None


def get_ws_manager() -> WebSocketManager:
    """This process's :class:`WebSocketManager` (created on first use)."""
    global _manager
    if _manager is None:
        _manager = WebSocketManager()
    return _manager
