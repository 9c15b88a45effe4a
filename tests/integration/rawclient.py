"""A counting raw WebSocket client: what a server guarantee looks like on the wire.

Tests of "once, in order, no gap, stays connected" must count what a plain client receives,
not what a client library hands its user: a library that drops duplicates or retries can
hide a server bug (one did: every event arrived twice when two sockets connected at once to
a fresh gateway). So this client keeps every frame of every connection it ever had, answers
no application-level message (no ``pong`` to a ``{"type": "ping"}``), sends no RFC 6455
ping of its own (a browser does not) and answers the server's RFC 6455 pings the way
browsers do, inside the ``websockets`` library. It can drop its socket abruptly (no close
handshake) and resume on a new one with ``since`` = the last seq it received.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
import websockets
from websockets.asyncio.client import ClientConnection

import control_plane.websocket
from control_plane.actors import hub_shards
from control_plane.core.hub_log import TARGET_ALL
from control_plane.core.protocol import normalize_event
from control_plane.core.shards import shard_of_job

Frame = dict[str, Any]

# Frames that are not hub events, even should a future gateway give them a ``seq``.
NOT_EVENTS = frozenset({"welcome", "ack", "error", "ping", "pong", "job.snapshot"})


SHARD_SPAN = 2**40  # a sharded hub's events are counted by key: shard * SHARD_SPAN + seq


def event_key(frame: Frame) -> int:
    """What identifies a hub event: its seq (one shard), else its shard and seq (a hub
    with ``--hub-shards``, whose frames say ``shard``). Keys of one shard keep seq order."""
    return int(frame.get("shard") or 0) * SHARD_SPAN + int(frame["seq"])


def seq_on(cursor: int | dict[str, int], job_id: str) -> int:
    """A cursor's seq on the shard of ``job_id``'s events (with one shard, the cursor)."""
    if isinstance(cursor, int):
        return cursor
    return cursor[str(shard_of_job(job_id, len(cursor)))]


async def since_on(seq: int, job_id: str) -> int | dict[str, int]:
    """A ``since`` of ``seq`` on the shard of ``job_id``'s events (the others from their
    oldest; with one shard, ``seq``)."""
    shards = len(await asyncio.to_thread(hub_shards.handles))
    return seq if shards == 1 else {str(shard_of_job(job_id, shards)): seq}


async def markers() -> list[tuple[int, int]]:
    """Broadcast an ``app.marker`` on every shard of the hub; return their (shard, seq). A
    socket that read them all has read what each shard had before (with one shard: what
    ``broadcast`` does)."""
    hubs = await asyncio.to_thread(hub_shards.handles)
    if len(hubs) == 1:
        manager = control_plane.websocket.get_ws_manager()
        return [(0, await manager.broadcast({"type": "app.marker"}))]
    event = normalize_event({"type": "app.marker"})
    seqs = await asyncio.gather(*(h.publish.remote([event], TARGET_ALL) for h in hubs))
    return list(enumerate(seqs))


def is_marker(frame: Frame, marks: list[tuple[int, int]]) -> bool:
    """Whether ``frame`` is one of the markers ``marks`` (:func:`markers`)."""
    key = (int(frame.get("shard") or 0), frame.get("seq"))
    return frame.get("type") == "app.marker" and key in marks


def read_all(client: RawClient, marks: list[tuple[int, int]]) -> Callable[[], bool]:
    """For ``client.wait_until``: whether it read every marker of :func:`markers` (each
    frame looked at once)."""
    wanted, seen, looked = set(marks), set(), 0

    def done() -> bool:
        nonlocal looked
        for item in client.received[looked:]:
            key = (int(item.frame.get("shard") or 0), item.frame.get("seq"))
            if key in wanted and item.frame.get("type") == "app.marker":
                seen.add(key)
        looked = len(client.received)
        return seen >= wanted

    return done


def is_event(frame: Frame) -> bool:
    """A hub event: numbered by the hub (``seq``) and on a ``channel``."""
    return (
        isinstance(frame.get("seq"), int)
        and isinstance(frame.get("channel"), str)
        and frame.get("type") not in NOT_EVENTS
    )


@dataclass(frozen=True)
class Received:
    connection: int  # which of the client's connections (1, 2, ...) read it
    at: float  # time.monotonic() when it was read
    frame: Frame


@dataclass(frozen=True)
class Closed:
    connection: int
    at: float
    code: int | None  # the close code the server sent; None: no close frame came
    reason: str | None
    by_server: bool  # False: this client dropped the socket
    detail: str = ""  # how the library saw the end (a close frame, or none and why)


class ServerClosed(ConnectionError):
    """The server closed the connection the caller was waiting on."""

    def __init__(self, closed: Closed) -> None:
        super().__init__(f"closed by the server: {closed.code} {closed.reason!r}")
        self.closed = closed


@dataclass
class Audit:
    """One client's stream over its whole life, compared with the hub's log."""

    received: int  # events on the audited channels, repeats included
    duplicates: list[int] = field(default_factory=list)  # seqs read more than once (any channel)
    gaps: list[int] = field(default_factory=list)  # expected seqs never read
    unexpected: list[int] = field(default_factory=list)  # read on these channels, not expected
    disorder: int = 0  # times a seq was not above the one read before it

    @property
    def ok(self) -> bool:
        return not (self.duplicates or self.gaps or self.unexpected or self.disorder)

    def __str__(self) -> str:
        return (
            f"{self.received} received, {len(self.duplicates)} duplicates "
            f"{self.duplicates[:5]}, {len(self.gaps)} gaps {self.gaps[:5]}, "
            f"{len(self.unexpected)} unexpected {self.unexpected[:5]}, "
            f"{self.disorder} out of order"
        )


class RawClient:
    """One logical client over as many sockets as it takes; see the module docstring."""

    __test__ = False

    def __init__(
        self,
        url: str,
        token: str | None,
        *,
        client_id: str | None = None,
        max_queue: int = 16,
        rcvbuf: int | None = None,
    ) -> None:
        self.url = url
        self.token = token
        self.client_id = client_id  # sent as ?client_id= on every connection when set
        self.max_queue = max_queue
        self.rcvbuf = rcvbuf  # SO_RCVBUF set before connecting: a small TCP window
        self.received: list[Received] = []
        self.closes: list[Closed] = []
        self.connections = 0
        self.connected_at: list[float] = []  # time.monotonic() of each connection's opening
        self.drops = 0
        self.types: Counter[tuple[str, str]] = Counter()  # (channel, type) of events read
        self.ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._new = asyncio.Event()
        self._ids = itertools.count(1)

    # --- connections ---------------------------------------------------------------------

    async def connect(self, timeout: float = 60.0) -> None:
        """Open a new socket (the previous one must be gone) and start reading it."""
        assert self.ws is None or self._reader is None or self._reader.done()
        headers = {"Authorization": f"Bearer {self.token}"} if self.token is not None else {}
        url = self.url
        if self.client_id is not None:
            url += "?" + urlencode({"client_id": self.client_id})
        sock = await self._socket(timeout) if self.rcvbuf is not None else None
        self.ws = await websockets.connect(
            url,
            additional_headers=headers,
            open_timeout=timeout,
            ping_interval=None,  # a browser sends no ping of its own; it answers the server's
            compression=None,
            max_queue=self.max_queue,
            proxy=None,
            sock=sock,
        )
        self.connections += 1
        self.connected_at.append(time.monotonic())
        self._reader = asyncio.get_running_loop().create_task(self._read(self.ws, self.connections))

    async def _socket(self, timeout: float) -> socket.socket:
        parts = urlsplit(self.url)
        assert parts.hostname is not None and parts.port is not None
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        assert self.rcvbuf is not None
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)  # before connect
        sock.setblocking(False)
        async with asyncio.timeout(timeout):
            await asyncio.get_running_loop().sock_connect(sock, (parts.hostname, parts.port))
        return sock

    async def _read(self, ws: ClientConnection, connection: int) -> None:
        try:
            while True:
                raw = await ws.recv()
                frame: Frame = json.loads(raw)
                self.received.append(Received(connection, time.monotonic(), frame))
                if is_event(frame):
                    self.types[(frame["channel"], frame["type"])] += 1
                self._new.set()
        except websockets.ConnectionClosed as e:
            rcvd = ws.protocol.close_rcvd
            self.closes.append(
                Closed(
                    connection,
                    time.monotonic(),
                    rcvd.code if rcvd else None,
                    rcvd.reason if rcvd else None,
                    by_server=True,
                    detail=f"{e!r}; cause {e.__cause__!r}",
                )
            )
            self._new.set()

    @property
    def open(self) -> bool:
        return self._reader is not None and not self._reader.done()

    def stop_reading(self) -> None:
        """Read nothing more: with a small ``max_queue`` the library stops reading the TCP
        socket, so the server's sends back up to it."""
        if self._reader is not None:
            self._reader.cancel()  # recv() is cancel-safe: no frame is lost

    def resume_reading(self) -> None:
        assert self.ws is not None and self._reader is not None and self._reader.done()
        self._reader = asyncio.get_running_loop().create_task(self._read(self.ws, self.connections))

    def drop(self) -> None:
        """Vanish abruptly: no close frame, the TCP connection is aborted."""
        if self._reader is not None and not self._reader.done():
            self._reader.cancel()
            self.closes.append(Closed(self.connections, time.monotonic(), None, None, False))
        if self.ws is not None:
            self.ws.transport.abort()
        self.drops += 1
        self._reader = None

    async def resume(self, channels: Sequence[str], timeout: float = 60.0) -> str:
        """A new socket, subscribed to ``channels`` from the last seq received (of each
        shard, with a sharded hub)."""
        if self.open:
            self.drop()
        await self.connect(timeout)
        return await self.subscribe(channels, since=self.resume_since)

    @property
    def resume_since(self) -> int | dict[str, int]:
        """``since`` for a resume: the last seq read, or with shards the last of each."""
        sharded = [f for f in self.events() if "shard" in f]
        if not sharded:
            return self.last_seq
        since: dict[str, int] = {}
        for frame in sharded:
            key = str(frame["shard"])
            since[key] = max(since.get(key, 0), frame["seq"])
        return since

    async def close(self, timeout: float = 10.0) -> None:
        if self.ws is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(timeout):
                    await self.ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader

    # --- requests ------------------------------------------------------------------------

    async def send(self, message: Frame) -> None:
        """Send one frame; ``ServerClosed`` when the server closed the socket already."""
        assert self.ws is not None
        try:
            await self.ws.send(json.dumps(message))
        except websockets.ConnectionClosed as e:
            if self._reader is not None:  # it records the close
                with contextlib.suppress(BaseException):
                    async with asyncio.timeout(10):
                        await asyncio.shield(self._reader)
            if not (self.closes and self.closes[-1].connection == self.connections):
                rcvd = e.rcvd
                self.closes.append(
                    Closed(
                        self.connections,
                        time.monotonic(),
                        rcvd.code if rcvd else None,
                        rcvd.reason if rcvd else None,
                        by_server=True,
                    )
                )
            raise ServerClosed(self.closes[-1]) from e

    async def subscribe(
        self, channels: Sequence[str], since: int | dict[str, int] | None = None
    ) -> str:
        """Send a subscribe frame; returns its request id (the ack carries it)."""
        request_id = f"s{next(self._ids)}"
        message: Frame = {"type": "subscribe", "channels": list(channels), "id": request_id}
        if since is not None:
            message["since"] = since
        await self.send(message)
        return request_id

    async def reply_to(self, request_id: str, timeout: float = 60.0) -> Frame:
        try:
            return await self.wait_for(
                lambda f: (
                    f["type"] in ("ack", "error") and f["data"].get("request_id") == request_id
                ),
                timeout,
            )
        except TimeoutError as e:
            raise TimeoutError(f"no reply to {request_id} in {timeout} s: {self.describe()}") from e

    async def acked(self, request_id: str, timeout: float = 60.0) -> Frame:
        """The ack of a request; an ``error`` reply fails the caller."""
        reply = await self.reply_to(request_id, timeout)
        if reply["type"] != "ack":
            raise AssertionError(f"request {request_id} refused: {reply['data']}")
        return reply

    # --- waiting -------------------------------------------------------------------------

    async def wait_for(self, predicate: Callable[[Frame], bool], timeout: float) -> Frame:
        """The first frame (of the client's whole life) that matches; ``ServerClosed`` when
        the current connection closes first."""
        seen = 0
        async with asyncio.timeout(timeout):
            while True:
                for item in self.received[seen:]:
                    if predicate(item.frame):
                        return item.frame
                seen = len(self.received)
                self._raise_if_closed()
                self._new.clear()
                await self._new.wait()

    async def wait_until(self, condition: Callable[[], bool], timeout: float) -> None:
        """Until ``condition()`` holds, checked on each frame read."""
        async with asyncio.timeout(timeout):
            while not condition():
                self._raise_if_closed()
                self._new.clear()
                await self._new.wait()

    async def wait_closed(self, timeout: float) -> Closed:
        async with asyncio.timeout(timeout):
            while not (self.closes and self.closes[-1].connection == self.connections):
                self._new.clear()
                await self._new.wait()
        return self.closes[-1]

    def _raise_if_closed(self) -> None:
        if self.closes and self.closes[-1].connection == self.connections:
            last = self.closes[-1]
            if last.by_server:
                raise ServerClosed(last)
            raise ConnectionError("this client dropped its connection")

    def describe(self) -> str:
        """A line on where this client stands, for failure messages."""
        events = self.events()
        last = f"{time.monotonic() - self.received[-1].at:.1f} s ago" if self.received else "never"
        return (
            f"{len(self.received)} frames ({len(events)} events, last seq {self.last_seq}), "
            f"last read {last}, {'open' if self.open else 'not open'}, "
            f"{self.connections} connection(s), {self.drops} drops, closes by the server "
            f"{[(c.code, c.reason) for c in self.closes if c.by_server]}"
        )

    def story(self, closed: Closed) -> str:
        """What one connection read before it closed, for failure messages."""
        read = [r for r in self.received if r.connection == closed.connection]
        events = sum(1 for r in read if is_event(r.frame))
        replayed = [
            r.frame["data"].get("replayed")
            for r in read
            if r.frame.get("type") == "ack" and "replayed" in r.frame.get("data", {})
        ]
        opened = self.connected_at[closed.connection - 1]
        welcome = next((r.frame for r in read if r.frame.get("type") == "welcome"), None)
        server_id = welcome["data"].get("client_id") if welcome else None
        kinds = Counter(r.frame.get("type") for r in read if not is_event(r.frame))
        last = f"{closed.at - read[-1].at:.2f} s before the close" if read else "nothing"
        return (
            f"connection {closed.connection} (id {server_id}): {closed.code} {closed.reason!r} "
            f"{closed.at - opened:.2f} s after it opened, having read {events} events and "
            f"{dict(kinds)}, the last {last} (acks said replayed={replayed})"
        )

    # --- counting ------------------------------------------------------------------------

    def events(self, channels: Iterable[str] | None = None) -> list[Frame]:
        """Every hub event read, in the order read, over all connections."""
        wanted = None if channels is None else set(channels)
        return [
            r.frame
            for r in self.received
            if is_event(r.frame) and (wanted is None or r.frame["channel"] in wanted)
        ]

    def seqs(self, channels: Iterable[str] | None = None) -> list[int]:
        """The events' keys (:func:`event_key`: their seqs, with one shard)."""
        return [event_key(f) for f in self.events(channels)]

    def seqs_by_channel(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for frame in self.events():
            out.setdefault(frame["channel"], []).append(event_key(frame))
        return out

    @property
    def last_seq(self) -> int:
        """The seq to resume from: the greatest one read (0 before any; one shard)."""
        return max((f["seq"] for f in self.events()), default=0)

    def duplicates(self) -> list[int]:
        """Seqs read more than once, on any channel, over the client's whole life."""
        return sorted(s for s, n in Counter(self.seqs()).items() if n > 1)

    def gaps(self, expected: Sequence[int], channels: Iterable[str] | None = None) -> list[int]:
        return sorted(set(expected) - set(self.seqs(channels)))

    def audit(self, expected: Sequence[int], channels: Iterable[str], after: int = 0) -> Audit:
        """Compare what was read on ``channels`` (seqs above ``after``) with ``expected``."""
        got = [s for s in self.seqs(channels) if s > after]
        want = {s for s in expected if s > after}
        # Seqs are in order within a shard (the only one, by default).
        disorder = sum(
            1 for a, b in itertools.pairwise(got) if b <= a and a // SHARD_SPAN == b // SHARD_SPAN
        )
        return Audit(
            received=len(got),
            duplicates=self.duplicates(),
            gaps=sorted(want - set(got)),
            unexpected=sorted(set(got) - want),
            disorder=disorder,
        )


async def healthz(plane: Any, timeout: float = 10.0) -> dict[str, Any]:
    """The gateway's ``/healthz`` (its pid, sockets and counters)."""
    async with httpx.AsyncClient(base_url=plane.base_url, timeout=timeout) as http:
        response = await http.get("/healthz")
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body
