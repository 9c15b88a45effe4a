"""One socket of a gateway replica: its reader, writer and watchdog tasks, its send queue,
and its side of the replay seam.

A session runs three tasks in one task group; when one ends the others are cancelled:

* the reader takes client frames, answers bad ones with an ``error`` (the socket stays),
  and runs each request in a task of its own (a subscribe waits for the hub's replay);
* the writer pops the :class:`~control_plane.core.outbox.Outbox` and awaits the socket for
  each frame, so the transport paces it (uvicorn waits while the peer's TCP window is shut);
* the watchdog closes a socket whose writer is stuck on one frame for ``max_lag`` (the
  client reads nothing) or that never subscribes.

Closing runs in a task of its own, so that a close started by one of the three is not
cancelled with it; a close that cannot be sent within ``close_timeout`` (the peer reads
nothing, so even the close frame waits) aborts the connection.

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
        self._subscribes: set[int] = set()  # id() of each of them
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
        self.job_ids: set[str] = set()  # of the job channels it subscribed to (for the logs)
        self._writer: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[None] | None = None
        self._catchers: dict[int, asyncio.Task[None]] = {}  # shard -> its catch-up
        self._caught_up = asyncio.Event()  # clear while catching up: subscribes wait
        self._caught_up.set()
        self._requests: set[asyncio.Task[None]] = set()

    @property
    def seam(self) -> SocketSeam:
        """The seam of shard 0 (the only one by default)."""
        return self.seams[0]

    @property
    def closing(self) -> bool:
        return self.state in (SessionState.CLOSING, SessionState.CLOSED)

    # --- running ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the socket until it closes (either side)."""
        try:
            async with asyncio.TaskGroup() as group:
                self._writer = group.create_task(self._write())
                tasks = {
                    self._writer,
                    group.create_task(self._read()),
                    group.create_task(self._watch()),
                }
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in tasks:
                    task.cancel()
        except* WebSocketDisconnect:
            pass
        except* Exception:
            logger.exception("socket %s failed", self.client_id)
        finally:
            if self._expiry is not None:
                self._expiry.cancel()
            for request in self._requests:
                request.cancel()
            for catcher in self._catchers.values():
                catcher.cancel()
            self.manager.forget(self)
            if self._closer is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._closer)
            self.state = SessionState.CLOSED
            self.manager.closed(self)

    # --- sending ---------------------------------------------------------------------------

    def offer(self, entry: LogEntry, shard: int = 0) -> None:
        """A live entry of hub shard ``shard`` for this socket (from its hub reader)."""
        if self.closing:
            return
        if not self.principal.is_admin and not may_receive(
            self.principal, entry, self.manager.owners
        ):
            return
        seam = self.seams[shard]
        offer = seam.live(entry)
        if offer is Offer.SEND:
            self._queue(entry, shard)
        elif offer is Offer.HELD and seam.merge.overflowing:
            self._slow(f"{len(seam.merge)} events held back behind a replay")

    def reply(self, frame: dict[str, Any]) -> None:
        """Queue a reply (ack, error, pong, snapshot, welcome)."""
        if not self.closing and not self.outbox.push(encode(frame), reply=True):
            self._slow("no room for a reply")

    def _queue(self, entry: LogEntry, shard: int = 0) -> None:
        if self.outbox.push(entry.frame):
            self.delivered += 1
        elif self.seams[shard].fell_behind(entry):
            # It reads, but the events come faster: go on from the hub's history.
            self.manager.catch_ups += 1
            self._caught_up.clear()
            self._catchers[shard] = asyncio.get_running_loop().create_task(self._catch_up(shard))
        else:
            self._slow(f"{len(self.outbox)} events queued")

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
            if self._catchers.get(shard) is asyncio.current_task():
                del self._catchers[shard]
            if not self._catchers:
                self._caught_up.set()

    def _slow(self, why: str) -> None:
        if self.closing:
            return
        logger.warning("closing slow client %s: %s", self.client_id, why)
        self.manager.slow_closed += 1
        self.close_soon(CloseCode.SLOW_CONSUMER, "slow consumer")

    async def _write(self) -> None:
        ws, beat = self.websocket, self.heartbeat
        try:
            while (frame := await self.outbox.get()) is not None:
                beat.sending(time.monotonic())
                await ws.send_text(frame)
                beat.sent()
                self.manager.frames_sent += 1
        except (WebSocketDisconnect, RuntimeError, OSError):
            return  # the peer is gone; the reader sees the disconnect

    async def _watch(self) -> None:
        cfg = self.config
        limits = HeartbeatLimits(cfg.max_lag, cfg.subscribe_deadline)
        period = max(0.05, min(cfg.max_lag, cfg.subscribe_deadline) / 4)
        while not self.closing:
            await asyncio.sleep(period)
            verdict = self.heartbeat.verdict(time.monotonic(), limits)
            if verdict is Verdict.SLOW:
                self._slow(f"a send blocked for over {cfg.max_lag:g} s")
            elif verdict is Verdict.NO_SUBSCRIBE:
                self.close_soon(CloseCode.NO_SUBSCRIBE, verdict.value)

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
        ws, limit = self.websocket, self.config.max_frame_bytes
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                self.peer_code = message.get("code")
                return
            text = message.get("text")
            size = _frame_size(text, message.get("bytes"), limit)
            if size > limit:
                why = f"frame of {size} bytes is over the {limit} limit"
                await self.close(CloseCode.TOO_BIG, why)
                return
            if text is None:
                self.reply(error_reply(None, "binary_frame", "send JSON as text frames"))
                continue
            try:
                msg = parse_client_message(text, self.config.max_depth)
            except BadFrame as e:
                self.reply(error_reply(e.request_id, e.code, e.message))
                continue
            if isinstance(msg, Pong):
                continue  # answers to the pings of older servers: nothing to do
            refusal = self._refusal(msg)
            if refusal is not None:
                self.reply(error_reply(msg.id, *refusal))
                continue
            task = asyncio.get_running_loop().create_task(self._handle(msg))
            self._requests.add(task)
            task.add_done_callback(self._requests.discard)
            if isinstance(msg, Subscribe):
                # In flight until its ack (or error) is queued: what a client can see. The
                # replay that follows an ack is paced by the send queue.
                key = id(msg)
                self.subscribing += 1
                self._subscribes.add(key)
                task.add_done_callback(functools.partial(self._subscribed_task, key))

    def _subscribed_task(self, key: int, _: asyncio.Task[None]) -> None:
        self._subscribed(key)

    def _subscribed(self, key: int) -> None:
        if key in self._subscribes:
            self._subscribes.discard(key)
            self.subscribing -= 1

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
        self.job_ids.update(c[len(prefix) :] for c in msg.channels if c.startswith(prefix))
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
        client that takes no frame for ``max_lag`` is slow."""
        seam = self.seams[shard]
        while batch := seam.next_batch():
            for entry in batch:
                if seam.claimed_since(entry):
                    continue  # a subscribe with ``since`` said so while the batch went out
                if not await self._put(entry, shard) or seam.catching_up:
                    return  # closing, or back to the history (the rounds go on)

    async def _put(self, entry: LogEntry, shard: int = 0) -> bool:
        """Queue a replayed entry, waiting for room; False when the socket is closing."""
        if self.closing:
            return False
        try:
            async with asyncio.timeout(self.config.max_lag):
                if not await self.outbox.put(entry.frame):
                    return False
        except TimeoutError:
            self._slow(f"no room for a replay in {self.config.max_lag:g} s")
            return False
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
