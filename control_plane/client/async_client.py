"""The Python client SDK: live events and job commands over the gateway's WebSocket.

    async with ControlPlaneClient("ws://127.0.0.1:8000/ws") as client:
        async for event in client.events([f"job:{job_id}", "jobs"]):
            print(event["seq"], event["type"], event["data"])
        await client.pause(job_id)          # the ack's data, or a typed error

The client reconnects after a network loss (1006) or a close that
:class:`~control_plane.core.protocol.CloseCode` says to retry (1011, 1012, 4001, 4008, ...)
with jittered exponential backoff, keeps its ``client_id`` (so a
command retried after a reconnect is applied once), and re-subscribes every channel with
``since`` = the last seq it saw on that channel and the ``epoch`` it saw, so the stream
resumes with nothing lost; duplicates are dropped by seq. The server's RFC 6455 pings are
answered by the ``websockets`` library; the client also pings the server itself (an
application ``ping``, which measures the round trip); a connection silent past
``ping_timeout`` is dropped and
reconnected. When the server cannot recover (``recovered: false``) the stream carries a
``client.gap`` event and ``client.recovered`` is False: refresh state. It never retries
4401/4403 (auth, origin), 1009 (a frame over the limit) or a code the gateway does not send.
:class:`SyncControlPlaneClient` offers the same with blocking calls. No Ray here.

Its errors are in :mod:`control_plane.client.errors`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import random
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from control_plane.client.errors import (
    REJECTIONS,
    CommandRejected,
    ConnectionLost,
    RequestTimeout,
    Unauthorized,
)
from control_plane.core.errors import ControlPlaneError
from control_plane.core.limits import DEFAULT_SUBSCRIBES_IN_FLIGHT
from control_plane.core.protocol import (
    REFUSAL_CODES,
    receiving_channels,
    reconnects_after,
    utc_now_iso,
)
from control_plane.core.shards import WireCursor, cursor_max, cursor_min
from control_plane.gateway.auth import resolve_token

logger = logging.getLogger(__name__)

Event = dict[str, Any]
T = TypeVar("T")

SEEN_WINDOW = 65_536  # seqs remembered for dropping duplicates


class ConnectionState(StrEnum):
    CONNECTING = "connecting"  # the first connection is being made
    CONNECTED = "connected"  # open, subscriptions restored: events flow, commands go out
    RECONNECTING = "reconnecting"  # lost; backing off or reconnecting and resuming
    CLOSED = "closed"  # closed by the user, or by a close that is not retried


class _Dropped(Exception):
    """The socket a request went out on closed before its reply came."""


class _SeenSeqs:
    """A bounded set of (epoch, seq): seq is global across channels, and a replay of a
    channel subscribed later may legitimately bring seqs lower than the last one seen."""

    def __init__(self, size: int = SEEN_WINDOW) -> None:
        self._set: set[tuple[str | None, int]] = set()
        self._order: deque[tuple[str | None, int]] = deque()
        self._size = size

    def add(self, key: tuple[str | None, int]) -> bool:
        """Remember ``key``; False when it was seen already."""
        if key in self._set:
            return False
        self._set.add(key)
        self._order.append(key)
        if len(self._order) > self._size:
            self._set.discard(self._order.popleft())
        return True


@dataclass(eq=False)
class _Session:
    ws: ClientConnection
    welcome: asyncio.Future[dict[str, Any]]
    last_heard: float = field(default_factory=time.monotonic)


@dataclass(eq=False)
class _Stream:
    channels: list[str] | None  # None: everything the client receives
    queue: asyncio.Queue[Event | BaseException | None] = field(default_factory=asyncio.Queue)

    def wants(self, event: Event) -> bool:
        if self.channels is None or event["type"].startswith("client."):
            return True
        receivers = receiving_channels(event.get("channel") or "", event["type"])
        return not set(self.channels).isdisjoint(receivers)


class ControlPlaneClient:
    """An async client of the gateway's ``/ws``; use it as ``async with``."""

    def __init__(
        self,
        url: str = "ws://127.0.0.1:8000/ws",
        token: str | None = None,
        *,
        reconnect: bool = True,
        backoff_initial: float = 0.2,
        backoff_max: float = 10.0,
        on_state_change: Callable[[ConnectionState], None] | None = None,
        ping_interval: float = 10.0,
        ping_timeout: float = 30.0,
        request_timeout: float = 30.0,
        open_timeout: float = 30.0,
        client_id: str | None = None,
    ) -> None:
        self.url = url
        self.token = resolve_token(token)
        self.reconnect = reconnect
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.on_state_change = on_state_change
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.request_timeout = request_timeout
        self.open_timeout = open_timeout
        self.client_id = client_id or uuid.uuid4().hex[:16]
        self.state = ConnectionState.CLOSED
        self.recovered = True  # False when the last subscribe with since could not recover
        self.gaps = 0  # client.gap events so far
        self.duplicates = 0  # events dropped because their seq was seen already
        self.reconnects = 0
        self.last_failure = ""  # why the last connection attempt ended
        self.epoch: str | None = None
        # channel -> where it resumes: the last seq seen on it, or the seq it started from.
        # Per channel, because only within a channel do events arrive in seq order (a
        # replay of one channel may come after newer events of another).
        # With a sharded hub (the welcome says ``shards``) a cursor is a seq per shard,
        # ``{"0": 120, "1": 95}`` (``core/shards.py``).
        self._cursors: dict[str, WireCursor] = {}
        self.shards = 1
        self._streams: set[_Stream] = set()
        self._seen = _SeenSeqs()
        self._pending: dict[str, tuple[asyncio.Future[Event], dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self._session: _Session | None = None
        self._runner: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self._error: ControlPlaneError | None = None
        self._closing = False

    # --- lifecycle -------------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the connection; returns once connected, raises if that fails for good."""
        if self._runner is None or self._runner.done():
            self._closing, self._error = False, None
            self._set_state(ConnectionState.CONNECTING)
            self._runner = asyncio.get_running_loop().create_task(self._run())
        try:
            await self._wait_connected(self.open_timeout)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Close the socket and end every ``events()`` iterator."""
        self._closing = True
        if self._session is not None:
            await self._session.ws.close()
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        self._finish(None)

    async def __aenter__(self) -> ControlPlaneClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- the public API --------------------------------------------------------------------

    async def events(
        self, channels: Iterable[str] | None = None, *, since: WireCursor | None = None
    ) -> AsyncIterator[Event]:
        """Subscribe to ``channels`` and yield their events (and ``job.snapshot`` frames and
        ``client.gap`` events) until the client closes. ``channels=None`` subscribes nothing
        and yields everything this client receives. Channels this call added are
        unsubscribed when the iteration ends."""
        wanted = list(channels) if channels is not None else None
        stream = _Stream(wanted)
        self._streams.add(stream)
        added = [c for c in wanted or () if c not in self._cursors]
        try:
            if wanted:
                await self.subscribe(wanted, since=since)
            while (item := await stream.queue.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self._streams.discard(stream)
            if added and not self._closing:
                self._forget(added)

    async def subscribe(
        self, channels: Iterable[str], since: WireCursor | None = None
    ) -> dict[str, Any]:
        """Subscribe; with ``since``, the retained events after it are replayed first (they
        follow the ack). Returns the ack's data; a channel the server rejects raises."""
        message: dict[str, Any] = {"type": "subscribe", "channels": list(channels)}
        if since is not None:
            message.update(since=since, epoch=self.epoch)
        reply = await self._request(message, retry=True)
        self._raise_if_error(reply)
        data: dict[str, Any] = reply["data"]
        return data

    async def unsubscribe(self, channels: Iterable[str]) -> dict[str, Any]:
        """Stop receiving ``channels``; returns the ack's data (the channels left)."""
        channels = list(channels)
        for channel in channels:
            self._cursors.pop(channel, None)
        reply = await self._request({"type": "unsubscribe", "channels": channels}, retry=False)
        self._raise_if_error(reply)
        data: dict[str, Any] = reply["data"]
        return data

    async def pause(self, job_id: str) -> dict[str, Any]:
        """Pause a job; returns the ack's data (``status`` is the JobStatus as a dict)."""
        return await self._command("job.pause", job_id)

    async def resume(self, job_id: str) -> dict[str, Any]:
        return await self._command("job.resume", job_id)

    async def cancel(self, job_id: str) -> dict[str, Any]:
        return await self._command("job.cancel", job_id)

    async def suspend(self, job_id: str) -> dict[str, Any]:
        """Stop a job at its next checkpoint and free its actor; ``resume`` starts it again
        from its last ``ctx.save`` (a job that never saved is refused: TransitionRejected
        with code ``not_suspendable``)."""
        return await self._command("job.suspend", job_id)

    async def refresh_token(self, token: str) -> dict[str, Any]:
        """Go on with a fresh token (same subject) before the current one expires: the open
        socket takes it at once, and reconnects present it. Returns who it stands for."""
        self.token = token
        reply = await self._request({"type": "auth", "token": token}, retry=True)
        self._raise_if_error(reply)
        principal: dict[str, Any] = reply["data"]["principal"]
        return principal

    async def ping(self) -> float:
        """The round trip to the gateway in seconds."""
        started = time.perf_counter()
        await self._request({"type": "ping"}, retry=False)
        return time.perf_counter() - started

    @property
    def channels(self) -> list[str]:
        return sorted(self._cursors)

    @property
    def cursors(self) -> dict[str, WireCursor]:
        """Where each channel resumes after a reconnect: the last seq seen on it (of each
        shard, with a sharded hub)."""
        return dict(self._cursors)

    # --- requests --------------------------------------------------------------------------

    async def _command(self, kind: str, job_id: str) -> dict[str, Any]:
        # A retry after a reconnect reuses the id, and our client_id is kept across
        # reconnects, so the server applies the command once.
        reply = await self._request({"type": kind, "job_id": job_id}, retry=True)
        self._raise_if_error(reply, job_id)
        data: dict[str, Any] = reply["data"]
        return data

    async def _request(
        self, message: dict[str, Any], *, retry: bool, session: _Session | None = None
    ) -> Event:
        """Send with a fresh id and return the ack/error/pong carrying it. Waits for the
        connection; with ``retry``, sends again on the next connection after a drop."""
        request_id = f"c{next(self._ids)}"
        text = json.dumps({**message, "id": request_id})
        try:
            async with asyncio.timeout(self.request_timeout):
                while True:
                    current = session or await self._wait_connected(None)
                    future: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
                    self._pending[request_id] = (future, message)
                    try:
                        await current.ws.send(text)
                        return await future
                    except (_Dropped, ConnectionClosed):
                        if not retry or session is not None:
                            raise _Dropped(message["type"]) from None
                        await self._wait_lost(current)
                    finally:
                        self._pending.pop(request_id, None)
                        if future.done() and not future.cancelled():
                            future.exception()  # retrieved: a send that failed never awaited it
        except TimeoutError as e:
            raise RequestTimeout(f"no reply to {message['type']} in time") from e

    def _raise_if_error(self, reply: Event, job_id: str = "") -> None:
        if reply["type"] != "error":
            return
        data = reply["data"]
        cls = REJECTIONS.get(data.get("code", ""), CommandRejected)
        raise cls(data.get("code", ""), data.get("message", ""), data.get("request_id"), job_id)

    async def _wait_connected(self, timeout: float | None) -> _Session:
        try:
            async with asyncio.timeout(timeout):
                while True:
                    if self.state is ConnectionState.CLOSED:
                        raise self._error or ConnectionLost("the client is closed")
                    if self.state is ConnectionState.CONNECTED and self._session is not None:
                        return self._session
                    await self._changed.wait()
        except TimeoutError as e:
            why = f" (last: {self.last_failure})" if self.last_failure else ""
            raise RequestTimeout(f"not connected in time{why}") from e

    async def _wait_lost(self, session: _Session) -> None:
        while self._session is session and self.state is ConnectionState.CONNECTED:
            await self._changed.wait()

    def _set_state(self, state: ConnectionState) -> None:
        if state is self.state:
            return
        self.state = state
        old, self._changed = self._changed, asyncio.Event()
        old.set()
        if self.on_state_change is not None:
            try:
                self.on_state_change(state)
            except Exception:
                logger.exception("on_state_change callback failed")

    # --- the connection loop ---------------------------------------------------------------

    async def _run(self) -> None:
        attempt = 0
        try:
            while True:
                connected, code, reason = await self._connect_once()
                if self._closing:
                    return
                if code in REFUSAL_CODES:
                    raise Unauthorized(f"refused with {code}: {reason}", code, reason)
                if not reconnects_after(code):
                    raise ConnectionLost(f"closed with {code}: {reason}", code, reason)
                if not self.reconnect:
                    raise ConnectionLost(f"connection lost ({code}): {reason}", code, reason)
                if self.state is ConnectionState.CONNECTED:
                    self._set_state(ConnectionState.RECONNECTING)
                attempt = 0 if connected else attempt + 1
                delay = min(self.backoff_max, self.backoff_initial * 2**attempt)
                await asyncio.sleep(random.uniform(delay / 2, delay))
                self.reconnects += 1
        except ControlPlaneError as e:
            self._finish(e)

    async def _connect_once(self) -> tuple[bool, int | None, str]:
        """One connection from handshake to close: (reached CONNECTED, close code, reason)."""
        try:
            ws = await connect(
                self._url(),
                additional_headers={"Authorization": f"Bearer {self.token}"},
                open_timeout=self.open_timeout,
                ping_interval=None,  # heartbeats are application frames, as for browsers
                max_size=None,
                close_timeout=2,
            )
        except (OSError, TimeoutError, InvalidHandshake) as e:
            logger.info("connecting to %s failed: %s", self.url, e)
            self.last_failure = f"{type(e).__name__}: {e}"
            return False, None, self.last_failure
        session = _Session(ws, asyncio.get_running_loop().create_future())
        self._session = session
        reader = asyncio.get_running_loop().create_task(self._read(session))
        beat = asyncio.get_running_loop().create_task(self._heartbeat(session))
        connected = False
        try:
            first: set[asyncio.Future[Any]] = {session.welcome, reader}
            await asyncio.wait(first, return_when=asyncio.FIRST_COMPLETED)
            if session.welcome.done():
                welcome = session.welcome.result()
                self.epoch = self.epoch or welcome.get("epoch")
                self.shards = int(welcome.get("shards") or 1)
                await self._resume(session)
                connected = True
                self._set_state(ConnectionState.CONNECTED)
                await reader
        except (_Dropped, RequestTimeout) as e:
            logger.info("connection lost while resuming: %s", e)
        finally:
            self._session = None
            for task in (reader, beat):
                task.cancel()
            for future, _ in list(self._pending.values()):
                if not future.done():
                    future.set_exception(_Dropped())
            if ws.close_code is None:
                ws.transport.abort()
        self.last_failure = f"closed with {ws.close_code}: {ws.close_reason}"
        return connected, ws.close_code, ws.close_reason or ""

    async def _resume(self, session: _Session) -> None:
        """Re-subscribe every channel from where it left off (one subscribe per distinct
        ``since``); the replays follow the acks."""
        groups: dict[str, tuple[WireCursor, list[str]]] = {}
        for channel, since in self._cursors.items():
            key = json.dumps(since, sort_keys=True)
            groups.setdefault(key, (since, []))[1].append(channel)
        requests: list[dict[str, Any]] = [
            {"type": "subscribe", "channels": channels, "since": since, "epoch": self.epoch}
            for _, (since, channels) in sorted(groups.items())
        ]
        # The gateway takes a few subscribes in flight per socket (README "Limits"): send
        # them in groups that stay within its default.
        replies: list[dict[str, Any]] = []
        for at in range(0, len(requests), DEFAULT_SUBSCRIBES_IN_FLIGHT):
            group = requests[at : at + DEFAULT_SUBSCRIBES_IN_FLIGHT]
            replies += await asyncio.gather(
                *(self._request(m, retry=False, session=session) for m in group)
            )
        for reply, message in zip(replies, requests, strict=True):
            if reply["type"] == "error":
                logger.warning("resubscribing %s failed: %s", message["channels"], reply["data"])
                for channel in message["channels"]:
                    self._cursors.pop(channel, None)

    def _url(self) -> str:
        parts = urlsplit(self.url)
        query = [(k, v) for k, v in parse_qsl(parts.query) if k != "client_id"]
        query.append(("client_id", self.client_id))
        return urlunsplit(parts._replace(query=urlencode(query)))

    async def _heartbeat(self, session: _Session) -> None:
        """Ping the server; a connection silent past ``ping_timeout`` is dead: abort it."""
        while True:
            await asyncio.sleep(min(self.ping_interval, self.ping_timeout / 2))
            if time.monotonic() - session.last_heard > self.ping_timeout:
                logger.info("no frame for %.1f s: dropping the connection", self.ping_timeout)
                session.ws.transport.abort()
                return
            with contextlib.suppress(ConnectionClosed):
                await session.ws.send('{"type":"ping"}')

    async def _read(self, session: _Session) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for raw in session.ws:
                session.last_heard = time.monotonic()
                try:
                    frame = json.loads(raw)
                    kind = frame["type"]
                except (ValueError, TypeError, KeyError):
                    logger.warning("ignoring a frame that is not a JSON event: %.200r", raw)
                    continue
                if kind in ("ack", "error", "pong"):
                    self._on_reply(frame)
                elif kind == "welcome":
                    if not session.welcome.done():
                        session.welcome.set_result(frame.get("data") or {})
                else:
                    self._on_event(frame)

    def _on_reply(self, frame: Event) -> None:
        data = frame.setdefault("data", {})
        pending = self._pending.get(str(data.get("request_id")))
        if pending is None:
            if frame["type"] == "error":
                logger.warning("server error: %s", data)
            return
        future, message = pending
        if frame["type"] == "ack" and message["type"] == "subscribe":
            # Handled here, before the replayed events that follow the ack are read.
            self._on_subscribe_ack(data, message)
        if not future.done():
            future.set_result(frame)

    def _on_subscribe_ack(self, data: dict[str, Any], message: dict[str, Any]) -> None:
        """Handled in the reader, before the replayed events that follow the ack."""
        epoch = data.get("epoch")
        head: WireCursor = data.get("seq") or 0
        changed = epoch is not None and self.epoch is not None and epoch != self.epoch
        if changed:  # a new hub log: its seqs start over
            self._cursors = {c: cursor_min(seq, head) for c, seq in self._cursors.items()}
        self.epoch = epoch or self.epoch
        # A live subscribe starts at the ack's seq; with since, at since (an integer since
        # to a sharded hub means that seq on every shard).
        since = message.get("since")
        start: WireCursor = head if since is None else since
        if isinstance(start, int) and isinstance(head, dict):
            start = {k: start for k in head}
        for channel in message["channels"]:
            self._cursors[channel] = cursor_max(self._cursors.get(channel, start), start)
        if "recovered" in data:
            self.recovered = bool(data["recovered"])
        if changed or data.get("recovered") is False:
            self.gaps += 1
            gap = {"channels": message["channels"], "since": message.get("since"), "epoch": epoch}
            gap["oldest"] = data.get("oldest")
            self._emit({"type": "client.gap", "timestamp": utc_now_iso(), "data": gap})

    def _on_event(self, frame: Event) -> None:
        seq = frame.get("seq")
        shard = frame.get("shard")
        if isinstance(seq, int) and isinstance(shard, int):  # a sharded hub's event
            if not self._seen.add((f"{self.epoch}/{shard}", seq)):
                self.duplicates += 1
                return
            receivers = receiving_channels(frame.get("channel") or "", frame["type"])
            for sub, cursor in self._cursors.items():
                if sub in receivers:
                    self._cursors[sub] = cursor_max(cursor, {str(shard): seq})
        elif isinstance(seq, int):
            if not self._seen.add((self.epoch, seq)):
                self.duplicates += 1
                return
            receivers = receiving_channels(frame.get("channel") or "", frame["type"])
            for sub, cursor in self._cursors.items():
                if isinstance(cursor, int) and seq > cursor and sub in receivers:
                    self._cursors[sub] = seq
        self._emit(frame)

    def _emit(self, event: Event) -> None:
        for stream in self._streams:
            if stream.wants(event):
                stream.queue.put_nowait(event)

    def _forget(self, channels: list[str]) -> None:
        """Unsubscribe without waiting (an iterator is ending)."""
        for channel in channels:
            self._cursors.pop(channel, None)
        session = self._session
        if session is not None and self.state is ConnectionState.CONNECTED:
            text = json.dumps({"type": "unsubscribe", "channels": channels})
            task = asyncio.get_running_loop().create_task(session.ws.send(text))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())

    def _finish(self, error: ControlPlaneError | None) -> None:
        self._error = self._error or error
        self._set_state(ConnectionState.CLOSED)
        for stream in self._streams:
            stream.queue.put_nowait(error)

    def _drop_connection_for_tests(self) -> None:
        """Abort the TCP connection as a network failure would (the server sees 1006)."""
        if self._session is not None:
            self._session.ws.transport.abort()
