"""One socket of a gateway replica: its read loop, its send queue, and its side of the
replay seam. An idle socket has no task of its own (10,000 sockets share one replica):

* the read loop runs in the ASGI handler's task (the one uvicorn made for the socket): it
  takes client frames, answers bad ones with an ``error`` (the socket stays), and runs each
  request in a task of its own (a subscribe waits for the hub's replay);
* frames are written by whoever has them, at once, when the socket can take them
  (``wire.py``: the fan-out writes one shared frame to every socket it is for); when the
  transport is paused (the peer's TCP window is shut) they wait in the
  :class:`~control_plane.core.outbox.Outbox`, and a writer task, started then and ended
  when the outbox is empty, awaits the socket for each, so the transport paces it;
* the manager's one watchdog (:meth:`Session.check`, for every socket each period) closes
  a socket whose writer is stuck on one frame for ``max_lag`` (the client reads nothing)
  or that never subscribes.

Closing runs in a task of its own, so that a close started by the read loop is not
cancelled with it; a close that cannot be sent within ``close_timeout`` (the peer reads
nothing, so even the close frame waits) aborts the connection, and a finished close ends
the read loop.

Measured per idle socket (``python -m benchmarks.socket_cost --trace``, 500 sockets):
before, 16.6 KB of ours (the session with a task group of three tasks, its outbox's
events, ...) in 47 KB of replica RSS; ``manager.py`` has the figures after.

Session states::

    OPEN ──subscribe──▶ SUBSCRIBED ──close()──▶ CLOSING ──tasks ended──▶ CLOSED
      └───────────────────close()───────────────▲
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from control_plane.core.errors import AuthError, ControlPlaneError, ForbiddenError
from control_plane.core.heartbeat import Heartbeat, HeartbeatLimits, Verdict
from control_plane.core.hub_log import LogEntry
from control_plane.core.limits import (
    DEFAULT_SUBSCRIBES_IN_FLIGHT,
    TokenBucket,
    check_event_type,
    close_reason,
)
from control_plane.core.outbox import Outbox
from control_plane.core.owners import may_receive
from control_plane.core.principals import Principal
from control_plane.core.protocol import (
    JOB_CHANNEL_PREFIX,
    Auth,
    BadFrame,
    Broadcast,
    ClientMessage,
    CloseCode,
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
from control_plane.core.seam import Offer, SocketSeam
from control_plane.core.shards import join_epochs, parse_since, split_epoch, wire_cursor
from control_plane.gateway import wire
from control_plane.gateway.replica_server import abort_connection
from control_plane.observability import tracing

if TYPE_CHECKING:
    from control_plane.gateway.manager import WebSocketManager

logger = logging.getLogger(__name__)


@dataclass
class SocketConfig:
    max_frame_bytes: int = 64 * 1024
    send_queue_size: int = 16_384  # frames queued for one socket before it counts as slow
    heartbeat_interval: float = 15.0  # seconds between RFC 6455 pings
    heartbeat_timeout: float = 20.0  # a pong later than this after its ping closes the socket
    max_lag: float = 15.0  # one send blocked this long: the client reads nothing (4008)
    subscribe_deadline: float = 60.0  # close a socket that never subscribes (4001)
    close_timeout: float = 10.0  # a close frame not sent by then: the connection is aborted
    # Limits (README "Limits"); each refused request gets an ``error`` with its own code.
    max_depth: int = 32  # JSON nesting of a client frame (too_deep)
    max_subscriptions: int = 1000  # channels one socket subscribes to (too_many_subscriptions)
    max_subscribes_in_flight: int = (
        DEFAULT_SUBSCRIBES_IN_FLIGHT  # not acked yet (too_many_requests)
    )
    requests_per_second: float = 50.0  # a socket's requests, steady (rate_limited) ...
    request_burst: int = 200  # ... after a burst of this many
    max_connections: int = 10_000  # sockets on one replica (close 4029)
    max_connections_per_principal: int = 256  # sockets of one principal on a replica (4029)
    handshake_timeout: float = 10.0  # TCP open to WebSocket upgrade done (the connection drops)

    def __post_init__(self) -> None:
        # A client that reads nothing cannot answer pings either: judge it slow (4008, with
        # its backlog and the close frame there for it if it reads again) before the ping
        # timeout drops the connection (uvicorn closes at once, and the peer's unread data
        # is lost to a reset).
        if self.max_lag >= self.heartbeat_interval + self.heartbeat_timeout:
            raise ValueError(
                f"max_lag ({self.max_lag:g} s) must be below heartbeat_interval + "
                f"heartbeat_timeout ({self.heartbeat_interval + self.heartbeat_timeout:g} s)"
            )


CommandRunner = Callable[[JobCommand, str], Awaitable[dict[str, Any]]]
SnapshotSource = Callable[[str], Awaitable[dict[str, Any] | None]]


class SessionState(StrEnum):
    OPEN = "open"  # accepted; no subscribe yet
    SUBSCRIBED = "subscribed"  # subscribed at least once
    CLOSING = "closing"  # a close was started: nothing more is queued
    CLOSED = "closed"  # its tasks ended


class Session:
    # Ten thousand of these live in one replica: slots, and what few sockets need (a
    # writer task, the catch-up event, request sets) made only when one does.
    __slots__ = (
        "_catchers",
        "_caught_up",
        "_closer",
        "_draining",
        "_expiry",
        "_gone",
        "_protocol",
        "_reading",
        "_requests",
        "_stop_reading",
        "_subscribes",
        "_writer",
        "client_id",
        "close_code",
        "config",
        "delivered",
        "heartbeat",
        "job_ids",
        "manager",
        "outbox",
        "peer_code",
        "principal",
        "principal_key",
        "requests",
        "seams",
        "state",
        "subscribing",
        "websocket",
    )

    def __init__(
        self,
        manager: WebSocketManager,
        websocket: WebSocket,
        client_id: str,
        principal: Principal,
    ) -> None:
        self.manager = manager
        self.config = manager.config
        self.websocket = websocket
        self.client_id = client_id
        self.principal = principal
        self._expiry: asyncio.TimerHandle | None = None
        # Sockets are counted per signed-token subject; the shared token's admin (a single
        # user's own clients) counts only toward the replica's total.
        self.principal_key = principal.sub if principal.signed else ""
        self.requests = TokenBucket(
            self.config.requests_per_second, self.config.request_burst, time.monotonic()
        )
        self.subscribing = 0  # subscribes in flight (not acknowledged yet)
        self._subscribes: set[int] | None = None  # id() of each of them
        self.state = SessionState.OPEN
        self.outbox = Outbox(self.config.send_queue_size)
        self.heartbeat = Heartbeat(time.monotonic())
        queue = self.config.send_queue_size
        # One seam per hub shard (one by default): seqs are per shard, and so is the seam.
        self.seams = [
            SocketSeam(max_held=16 * queue, rejoin_limit=queue) for _ in range(manager.shards)
        ]
        self.delivered = 0
        self.close_code: int | None = None
        self.peer_code: int | None = None  # the close code the peer (or its transport) gave
        self.job_ids: tuple[str, ...] = ()  # of the job channels it subscribed to (logs)
        # uvicorn's protocol, for frames written at once (``wire.py``); None: always ASGI.
        self._protocol = wire.server_protocol(websocket)
        if self._protocol is not None:
            wire.release_handshake(self._protocol)
        self._writer: asyncio.Task[None] | None = None  # only while frames wait in the outbox
        self._closer: asyncio.Task[None] | None = None
        self._catchers: dict[int, asyncio.Task[None]] | None = None  # shard -> its catch-up
        self._caught_up: asyncio.Event | None = None  # set while catching up: subscribes wait
        self._draining = 0  # a bit per shard whose drain runs
        self._requests: set[asyncio.Task[None]] | None = None
        self._reading: asyncio.Task[Any] | None = None  # run()'s task, while it reads
        self._stop_reading = False  # the close cancelled the read loop (run() carries on)
        self._gone = False  # a send found the peer gone

    @property
    def seam(self) -> SocketSeam:
        """The seam of shard 0 (the only one by default)."""
        return self.seams[0]

    @property
    def closing(self) -> bool:
        return self.state in (SessionState.CLOSING, SessionState.CLOSED)

    # --- running ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the socket until it closes (either side). The read loop runs in the
        caller's task (the ASGI handler's): a socket has no task of its own while it
        idles. The manager's watchdog judges it; frames are written by whoever has them."""
        task = asyncio.current_task()
        try:
            self._reading = task
            await self._read()
        except asyncio.CancelledError:
            if not self._stop_reading or task is None:
                raise
            task.uncancel()  # our own close ended the read loop: finish as after a disconnect
        except WebSocketDisconnect:
            pass
        except Exception:
            logger.exception("socket %s failed", self.client_id)
        finally:
            self._reading = None
            if self._expiry is not None:
                self._expiry.cancel()
            for request in self._requests or ():
                request.cancel()
            for catcher in (self._catchers or {}).values():
                catcher.cancel()
            if self._writer is not None:
                self._writer.cancel()
            self.manager.forget(self)
            if self._closer is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._closer)
            self.state = SessionState.CLOSED
            self.manager.closed(self)

    def check(self, now: float, limits: HeartbeatLimits) -> None:
        """The watchdog's look at this socket (the manager calls it for every socket)."""
        if self.closing:
            return
        verdict = self.heartbeat.verdict(now, limits)
        if verdict is Verdict.SLOW:
            self._slow(f"a send blocked for over {limits.max_lag:g} s")
        elif verdict is Verdict.NO_SUBSCRIBE:
            self.close_soon(CloseCode.NO_SUBSCRIBE, verdict.value)

    # --- sending ---------------------------------------------------------------------------

    def offer(self, entry: LogEntry, frame: bytes | None = None, shard: int = 0) -> None:
        """A live entry of hub shard ``shard`` for this socket (from its hub reader);
        ``frame`` is its wire frame (``wire.text_frame``), made once for every socket that
        gets it."""
        if self.closing or self._gone:
            return
        if not self.principal.is_admin and not may_receive(
            self.principal, entry, self.manager.owners
        ):
            return
        seam = self.seams[shard]
        offer = seam.live(entry)
        if offer is Offer.SEND:
            self._queue(entry, frame, shard)
        elif offer is Offer.HELD and seam.merge.overflowing:
            self._slow(f"{len(seam.merge)} events held back behind a replay")
        elif self._caught_up is None and seam.catching_up:
            # A drain went back to the history (its finally starts the rounds): from now
            # on a subscribe waits until the socket is live, as while any catch-up runs.
            self._caught_up = asyncio.Event()

    def reply(self, frame: dict[str, Any]) -> None:
        """Queue a reply (ack, error, pong, snapshot, welcome)."""
        if self.closing or self._gone:
            return
        if not self._send(encode(frame), None, reply=True):
            self._slow("no room for a reply")

    def _send(self, text: str, frame: bytes | None, reply: bool = False) -> bool:
        """Write ``text`` now when the socket takes it at once and nothing waits before it,
        else queue it for the writer (started if need be); False: the outbox is full."""
        protocol = self._protocol
        if (
            protocol is not None
            and self._writer is None
            and not self.outbox
            and wire.direct(protocol)
        ):
            wire.write(protocol, frame if frame is not None else wire.text_frame(text))
            self.manager.frames_sent += 1
            return True
        if not self.outbox.push(text, reply):
            return False
        self._start_writer()
        return True

    def _start_writer(self) -> None:
        if self._writer is None and self.outbox:
            self._writer = asyncio.get_running_loop().create_task(self._write())

    def _queue(self, entry: LogEntry, frame: bytes | None = None, shard: int = 0) -> None:
        if self._send(entry.frame, frame):
            self.delivered += 1
        elif self.seams[shard].fell_behind(entry):
            # It reads, but the events come faster: go on from the hub's history.
            self._start_catching_up(shard)
        else:
            self._slow(f"{len(self.outbox)} events queued")

    def _start_catching_up(self, shard: int) -> None:
        self.manager.catch_ups += 1
        if self._caught_up is None:
            self._caught_up = asyncio.Event()
        if self._catchers is None:
            self._catchers = {}
        self._catchers[shard] = asyncio.get_running_loop().create_task(self._catch_up(shard))

    async def _catch_up(self, shard: int = 0) -> None:
        """Rounds of the hub's (shard's) history after the last queued entry, each when the
        writer has made room, until the socket is live again (``core/seam.py`` says how)."""
        cfg, seam = self.config, self.seams[shard]
        try:
            while seam.catching_up and not self.closing:
                try:
                    async with asyncio.timeout(cfg.max_lag):
                        if not await self.outbox.room(below=max(1, cfg.send_queue_size // 2)):
                            return
                except TimeoutError:
                    self._slow(f"no room to catch up in {cfg.max_lag:g} s")
                    return
                cursor = self.manager.cursors()[shard]
                after, upto, last = seam.catch_up_round(cursor, cfg.send_queue_size)
                channels = sorted(self.manager.index.channels_of(self.client_id))
                reply = await self.manager.replay(
                    after, channels, None, self.client_id, upto, shard
                )
                if not reply["recovered"] or reply["epoch"] != self.manager.shard_epoch(shard):
                    self._slow(f"fell behind the history (after {after}, oldest {reply['oldest']})")
                    return
                entries, drain = seam.caught_up(self._visible(reply["entries"]), upto, last)
                for entry in entries:
                    if not await self._put(entry, shard):
                        return
                if drain:
                    await self._drain(shard)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("catching up %s failed", self.client_id)
            self._slow("catching up failed")
        finally:
            catchers = self._catchers
            if catchers is not None and catchers.get(shard) is asyncio.current_task():
                del catchers[shard]
            if not catchers:
                self._catchers = None
                caught_up, self._caught_up = self._caught_up, None
                if caught_up is not None:
                    caught_up.set()

    def _slow(self, why: str) -> None:
        if self.closing:
            return
        logger.warning("closing slow client %s: %s", self.client_id, why)
        self.manager.slow_closed += 1
        self.close_soon(CloseCode.SLOW_CONSUMER, "slow consumer")

    async def _write(self) -> None:
        """Send what waits in the outbox through ASGI (the transport paces it), then end:
        frames go straight to the socket again once the outbox is empty."""
        ws, beat, outbox = self.websocket, self.heartbeat, self.outbox
        try:
            while (frame := outbox.pop()) is not None:
                beat.sending(time.monotonic())
                await ws.send_text(frame)
                beat.sent()
                self.manager.frames_sent += 1
        except (WebSocketDisconnect, RuntimeError, OSError):
            self._gone = True  # the peer is gone; the reader sees the disconnect
        finally:
            if self._writer is asyncio.current_task():
                self._writer = None

    # --- closing ---------------------------------------------------------------------------

    def close_soon(self, code: int, reason: str) -> asyncio.Task[None]:
        """Start closing (once); the returned task ends when the close was sent or the
        connection aborted."""
        if self._closer is None:
            self.state = SessionState.CLOSING
            self.close_code = code
            self.outbox.close(discard=True)
            self._closer = asyncio.get_running_loop().create_task(self._close(code, reason))
        return self._closer

    async def close(self, code: int, reason: str) -> None:
        await asyncio.shield(self.close_soon(code, reason))

    async def _close(self, code: int, reason: str) -> None:
        try:
            await self._send_close(code, reason)
        finally:
            # uvicorn hands the reader a disconnect once a close is sent or the connection
            # aborted; a server that does not would leave it waiting, so end it here.
            reading = self._reading
            if reading is not None and reading is not asyncio.current_task():
                self._stop_reading = True
                reading.cancel()

    async def _send_close(self, code: int, reason: str) -> None:
        if self._writer is not None and self._writer is not asyncio.current_task():
            self._writer.cancel()  # it may wait on a peer that reads nothing
        ws = self.websocket
        if ws.application_state is not WebSocketState.CONNECTED:
            return
        try:
            async with asyncio.timeout(self.config.close_timeout):
                await ws.close(code, close_reason(reason))
        except TimeoutError:
            logger.info("close %d to %s not sent in time: aborting", code, self.client_id)
            abort_connection(ws)
        except Exception:
            logger.debug("closing %s failed", self.client_id, exc_info=True)

    # --- requests --------------------------------------------------------------------------

    async def _read(self) -> None:
        # The loop keeps no local of the last request: an idle socket's frame holds none.
        ws = self.websocket
        while True:
            too_big = self._take(await ws.receive())
            if too_big is None:
                continue
            if too_big:
                await self.close(CloseCode.TOO_BIG, too_big)
            return

    def _take(self, message: Any) -> str | None:
        """One client message: None to read on; else stop (a reason to close with 1009,
        or "" after a disconnect)."""
        if message["type"] == "websocket.disconnect":
            self.peer_code = message.get("code")
            return ""
        limit = self.config.max_frame_bytes
        text = message.get("text")
        size = _frame_size(text, message.get("bytes"), limit)
        if size > limit:
            return f"frame of {size} bytes is over the {limit} limit"
        if text is None:
            self.reply(error_reply(None, "binary_frame", "send JSON as text frames"))
            return None
        try:
            msg = parse_client_message(text, self.config.max_depth)
        except BadFrame as e:
            self.reply(error_reply(e.request_id, e.code, e.message))
            return None
        if isinstance(msg, Pong):
            return None  # answers to the pings of older servers: nothing to do
        refusal = self._refusal(msg)
        if refusal is not None:
            self.reply(error_reply(msg.id, *refusal))
            return None
        task = asyncio.get_running_loop().create_task(self._handle(msg))
        if self._requests is None:
            self._requests = set()
        self._requests.add(task)
        task.add_done_callback(self._request_done)
        if isinstance(msg, Subscribe):
            # In flight until its ack (or error) is queued: what a client can see. The
            # replay that follows an ack is paced by the send queue.
            key = id(msg)
            self.subscribing += 1
            if self._subscribes is None:
                self._subscribes = set()
            self._subscribes.add(key)
            task.add_done_callback(functools.partial(self._subscribed_task, key))
        return None

    def _request_done(self, task: asyncio.Task[None]) -> None:
        if self._requests is not None:
            self._requests.discard(task)
            if not self._requests:
                self._requests = None

    def _subscribed_task(self, key: int, _: asyncio.Task[None]) -> None:
        self._subscribed(key)

    def _subscribed(self, key: int) -> None:
        if self._subscribes is not None and key in self._subscribes:
            self._subscribes.discard(key)
            self.subscribing -= 1
            if not self._subscribes:
                self._subscribes = None

    def _refusal(self, msg: ClientMessage) -> tuple[str, str] | None:
        """(code, message) when a limit refuses ``msg``, else None."""
        cfg = self.config
        if not self.requests.take(time.monotonic()):
            return "rate_limited", (
                f"over {cfg.requests_per_second:g} requests a second "
                f"(after a burst of {cfg.request_burst}): slow down"
            )
        if isinstance(msg, Subscribe):
            if self.subscribing >= cfg.max_subscribes_in_flight:
                return "too_many_requests", (
                    f"{self.subscribing} subscribes are in flight, at most "
                    f"{cfg.max_subscribes_in_flight}: wait for their acks"
                )
            channels = self.manager.index.channels_of(self.client_id)
            total = len(channels | set(msg.channels))
            if total > cfg.max_subscriptions:
                return "too_many_subscriptions", (
                    f"{total} channels would be over the {cfg.max_subscriptions} one socket "
                    "may subscribe to"
                )
        return None

    async def _handle(self, msg: ClientMessage) -> None:
        try:
            if isinstance(msg, Ping):
                self.reply(server_frame("pong", request_id=msg.id))
            elif isinstance(msg, Subscribe):
                await self.subscribe(msg)
            elif isinstance(msg, Unsubscribe):
                self.manager.remove_channels(self, msg.channels)
                channels = sorted(self.manager.index.channels_of(self.client_id))
                self.reply(ack(msg.id, channels=channels))
            elif isinstance(msg, JobCommand):
                await self._command(msg)
            elif isinstance(msg, Auth):
                self._refresh(msg)
            elif isinstance(msg, Broadcast):
                if not self.principal.is_admin:
                    raise ForbiddenError("broadcast is for admins")
                try:
                    check_event_type(str(msg.event.get("type")))
                    event = normalize_event(msg.event)
                except ValueError as e:
                    self.reply(error_reply(msg.id, "invalid_event", str(e)))
                    return
                seq = await self.manager.broadcast(event)
                self.reply(ack(msg.id, seq=seq))
        except asyncio.CancelledError:
            raise
        except ControlPlaneError as e:
            if isinstance(e, ForbiddenError | AuthError):
                self._audit(msg.type, e.code, job_id=getattr(msg, "job_id", None), detail=e.message)
            self.reply(error_reply(msg.id, e.code, e.message))
        except Exception as e:
            logger.exception("request %r failed", msg)
            self.reply(error_reply(msg.id, "internal_error", f"{type(e).__name__}: {e}"))

    async def subscribe(self, msg: Subscribe) -> None:
        """Each ``job:<id>`` channel's snapshot, the ack, the replay (with ``since``), then
        live events; live events that come meanwhile are held and merged in by seq."""
        await self.manager.authorize_channels(self.principal, msg.channels)
        if self.state is SessionState.OPEN:
            self.state = SessionState.SUBSCRIBED
        self.heartbeat.subscribed = True
        prefix = JOB_CHANNEL_PREFIX
        jobs = {c[len(prefix) :] for c in msg.channels if c.startswith(prefix)}
        if jobs - set(self.job_ids):
            self.job_ids = tuple(sorted(jobs.union(self.job_ids)))
        if self._caught_up is not None:
            await self._caught_up.wait()  # a socket catching up subscribes once it is live
        shards = len(self.seams)
        since = parse_since(msg.since, shards)  # InvalidSinceError: an error reply
        live_from = self.manager.add_channels(self, msg.channels)
        for shard, seam in enumerate(self.seams):
            seam.subscribed(msg.channels, live_from[shard], None if since is None else since[shard])
        if since is None:
            await self._subscribe_live(msg, wire_cursor(live_from))
            return
        drains = [False] * shards
        replies: list[dict[str, Any]] = []
        try:
            await self._send_snapshots(msg.channels)
            epochs = split_epoch(msg.epoch, shards)
            replayed = 0
            for shard, seam in enumerate(self.seams):
                reply = await self.manager.replay(
                    since[shard], msg.channels, epochs[shard], self.client_id, shard=shard
                )
                replies.append(reply)
                cursor = live_from[shard]
                if reply["epoch"] != self.manager.shard_epoch(shard):
                    # A hub epoch the replica's reader has not seen yet: the reader resets and
                    # closes this socket (1012) in a moment, and the client resumes then.
                    cursor = reply["head"]
                start = since[shard] if reply["recovered"] else reply["oldest"] - 1
                kept, drains[shard] = seam.replayed(
                    msg.channels, self._visible(reply["entries"]), start=start, live_from=cursor
                )
                replayed += kept
            self.reply(
                self._ack(
                    msg,
                    epoch=join_epochs([r["epoch"] for r in replies]),
                    seq=wire_cursor([r["head"] for r in replies]),
                    recovered=all(r["recovered"] for r in replies),
                    replayed=replayed,
                    oldest=wire_cursor([r["oldest"] for r in replies]),
                )
            )
        except BaseException:
            for shard in range(len(replies), shards):  # the replays that will not come
                drains[shard] = self.seams[shard].replay_failed()
            raise
        finally:
            for shard in range(shards):
                if drains[shard] and not self.closing:
                    await self._drain(shard)

    async def _subscribe_live(self, msg: Subscribe, live_from: int | dict[str, int]) -> None:
        """Without ``since``: the snapshots, the ack, then live events (held meanwhile, so
        that none overtakes the snapshot of its job)."""
        if not any(channel.startswith(JOB_CHANNEL_PREFIX) for channel in msg.channels):
            self.reply(self._ack(msg, seq=live_from, epoch=self.manager.epoch))
            return
        for seam in self.seams:
            seam.hold_for_snapshots()
        try:
            await self._send_snapshots(msg.channels)
            self.reply(self._ack(msg, seq=live_from, epoch=self.manager.epoch))
        finally:
            drains = [seam.snapshots_sent() for seam in self.seams]
            for shard, drain in enumerate(drains):
                if drain and not self.closing:
                    await self._drain(shard)

    async def _command(self, msg: JobCommand) -> None:
        # Its round trip and outcome also go to the metrics and the log (``command_done``).
        started, outcome = time.monotonic(), "cancelled"
        try:
            with tracing.span("command", job_id=msg.job_id, command=msg.command):
                result = await self.manager.run_command(msg, self.client_id, self.principal)
            outcome = "ok"
        except ForbiddenError as e:
            outcome = e.code
            raise  # _handle records the refusal
        except ControlPlaneError as e:
            outcome = e.code
            self._audit(msg.type, e.code, job_id=msg.job_id)
            raise
        except Exception:
            outcome = "internal_error"
            self._audit(msg.type, "internal_error", job_id=msg.job_id)
            raise
        finally:
            self.manager.command_done(msg, self.client_id, outcome, time.monotonic() - started)
        self._audit(msg.type, "ok", job_id=msg.job_id)
        self.reply(ack(msg.id, job_id=msg.job_id, command=msg.command, **result))

    # --- who is asking ---------------------------------------------------------------------

    def _visible(self, entries: list[LogEntry]) -> list[LogEntry]:
        """What of a replay or a round of history this socket's principal may receive."""
        if self.principal.is_admin:
            return entries
        owners = self.manager.owners
        return [e for e in entries if may_receive(self.principal, e, owners)]

    def watch_expiry(self) -> None:
        """Close with 4401 when the principal's token expires (a refresh moves it)."""
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        expires_at = self.principal.expires_at
        if expires_at is None:
            return
        delay = max(0.0, expires_at - time.time())
        self._expiry = asyncio.get_running_loop().call_later(delay, self._expired)

    def _expired(self) -> None:
        self._audit("session", "expired")
        self.close_soon(CloseCode.UNAUTHORIZED, "token expired")

    def _refresh(self, msg: Auth) -> None:
        """A new token for this socket: the same subject, any role its token gives."""
        principal = self.manager.authenticate(msg.token)
        if principal.sub != self.principal.sub:
            raise ForbiddenError(
                f"a socket opened as {self.principal.sub!r} cannot continue as {principal.sub!r}"
            )
        self.principal = principal
        self.watch_expiry()
        self.reply(ack(msg.id, principal=principal.public()))

    def _audit(self, action: str, outcome: str, **fields: Any) -> None:
        self.manager.audit.record(
            self.principal.sub, action, outcome, client_id=self.client_id, **fields
        )

    def _ack(self, msg: Subscribe, **data: Any) -> dict[str, Any]:
        self._subscribed(id(msg))
        channels = sorted(self.manager.index.channels_of(self.client_id))
        return ack(msg.id, channels=channels, **data)

    async def _drain(self, shard: int = 0) -> None:
        """Send the replay and the live entries held meanwhile (of shard ``shard``), in seq
        order. A replay may be far larger than the send queue, so it waits for room; a
        client that takes no frame for ``max_lag`` is slow. One drain runs at a time (the
        running one takes the next batch), so that batches go out in seq order. When more
        piles up behind it than a queue's worth, it goes back to the hub's history."""
        bit = 1 << shard
        if self._draining & bit:
            return
        self._draining |= bit
        seam = self.seams[shard]
        try:
            while batch := seam.next_batch():
                for entry in batch:
                    if seam.claimed_since(entry):
                        continue  # a subscribe with ``since`` said so while the batch went out
                    if not await self._put(entry, shard) or seam.catching_up:
                        return  # closing, or back to the history (the rounds go on)
        finally:
            self._draining &= ~bit
            catchers = self._catchers
            if (
                seam.catching_up
                and not self.closing
                and (catchers is None or shard not in catchers)
            ):
                self._start_catching_up(shard)  # a subscribe's drain fell behind

    async def _put(self, entry: LogEntry, shard: int = 0) -> bool:
        """Queue a replayed entry, waiting for room; False when the socket is closing."""
        if self.closing:
            return False
        if not self._send(entry.frame, None):
            try:
                async with asyncio.timeout(self.config.max_lag):
                    if not await self.outbox.put(entry.frame):
                        return False
            except TimeoutError:
                self._slow(f"no room for a replay in {self.config.max_lag:g} s")
                return False
            self._start_writer()
        self.seams[shard].sent(entry)
        self.delivered += 1
        return True

    async def _send_snapshots(self, channels: list[str]) -> None:
        for channel in channels:
            if channel.startswith(JOB_CHANNEL_PREFIX):
                snap = await self.manager.snapshot(channel[len(JOB_CHANNEL_PREFIX) :])
                if snap is not None:
                    frame = server_frame("job.snapshot", **snap)
                    frame["channel"] = channel
                    self.reply(frame)


def _frame_size(text: str | None, data: bytes | None, limit: int) -> int:
    """Bytes in a frame; encodes text only when its length alone cannot settle the limit."""
    if text is None:
        return len(data or b"")
    return len(text.encode()) if len(text) * 4 > limit else len(text)
