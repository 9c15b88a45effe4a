"""Delivery guarantees counted on the wire: once, in order, no gap, stays connected.

Every client here is a :class:`~tests.integration.rawclient.RawClient`: it drops no
duplicate, retries nothing and answers no application-level message, so what it counts is
what the gateway sent. The expected stream is the hub's own log for the channels.
Real Ray, the real Serve gateway of the ``plane`` fixture.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import statistics
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import httpx
import psutil
import pytest
import ray

import control_plane
import control_plane.websocket
from control_plane.actors import hub_shards
from control_plane.core.hub_log import LogEntry
from control_plane.core.shards import shard_of
from tests.conftest import HEARTBEAT_INTERVAL, HEARTBEAT_TIMEOUT, HISTORY, TOKEN
from tests.integration.rawclient import (
    SHARD_SPAN,
    Closed,
    RawClient,
    ServerClosed,
    healthz,
    markers,
    read_all,
)

pytestmark = pytest.mark.ray

OLD_APP_HEARTBEAT_TIMEOUT = 10.0  # what the application-level heartbeat used to allow
POLL = 0.1  # seconds between looks at something that sends no notice (a pid, a TCP state)
TCP_ESTABLISHED = 1  # tcpi_state values (include/net/tcp_states.h)


# --- the server's side, seen from outside ----------------------------------------------------


async def hub_log(channels: list[str]) -> list[LogEntry]:
    """The hub's retained entries on ``channels``, in seq order (broadcasts left out); with
    a sharded hub, each shard's, their seqs made keys as the client counts them
    (:func:`~tests.integration.rawclient.event_key`)."""
    hubs = hub_shards.handles()
    if len(hubs) == 1:
        reply = await hubs[0].replay.remote(0, channels)
        return [e for e in reply["entries"] if e.channel in channels]
    entries: list[LogEntry] = []
    for shard, hub in enumerate(hubs):
        mine = [c for c in channels if shard_of(c, len(hubs)) == shard]
        if mine:
            reply = await hub.replay.remote(0, mine)
            entries += [
                e._replace(seq=shard * SHARD_SPAN + e.seq)
                for e in reply["entries"]
                if e.channel in mine
            ]
    return sorted(entries)


def seqs_of(entries: list[LogEntry]) -> list[int]:
    return [e.seq for e in entries]


async def restart_gateway(plane: Any) -> tuple[int, int]:
    """Kill the gateway's Serve replica; return (old pid, new pid) once a new one answers."""
    old = (await healthz(plane))["pid"]
    replicas = [
        a
        for a in ray.util.list_named_actors(all_namespaces=True)
        if "SERVE_REPLICA" in a["name"] and "gateway" in a["name"]
    ]
    assert replicas, "no gateway replica found"
    for replica in replicas:
        with contextlib.suppress(ValueError):  # already gone
            actor = ray.get_actor(replica["name"], namespace=replica["namespace"])
            ray.kill(actor, no_restart=False)
    async with asyncio.timeout(240):
        while True:
            with contextlib.suppress(httpx.HTTPError):
                pid: int = (await healthz(plane, timeout=5))["pid"]
                if pid != old:
                    return old, pid
            await asyncio.sleep(POLL)


def held_job(target: str, **kwargs: Any) -> control_plane.JobHandle:
    """A job submitted and held at its first checkpoint, so sockets can listen first."""
    job = control_plane.submit(target, job_options={"pause_timeout": 30}, **kwargs)
    assert job.pause().state == "paused"
    return job


async def all_read_a_marker(clients: list[RawClient], timeout: float = 120.0) -> list[Closed]:
    """Broadcast a marker and wait until every client read it: what the hub had before it
    has reached them all (and any repeat of it would be counted). Returns the closes by the
    server of clients that will not read it."""
    marks = await markers()  # one per shard: what each shard had before reached them all
    if len(marks) == 1:
        [(_, marker)] = marks
        waits = [c.wait_for(lambda f: f.get("seq") == marker, timeout) for c in clients]
    else:
        waits = [c.wait_until(read_all(c, marks), timeout) for c in clients]
    outcomes = await asyncio.gather(*waits, return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException) and not isinstance(outcome, ServerClosed):
            raise outcome
    return [o.closed for o in outcomes if isinstance(o, ServerClosed)]


def completed(client: RawClient, channels: list[str]) -> bool:
    return all(client.types[(ch, "job.completed")] for ch in channels)


async def close_all(clients: list[RawClient]) -> None:
    await asyncio.gather(*(c.close() for c in clients))


# --- 1. a fresh gateway ---------------------------------------------------------------------


@pytest.mark.timeout(600)
@pytest.mark.parametrize("since", [None, 0], ids=["live", "replay"])
async def test_fifty_sockets_connecting_at_once_to_a_fresh_gateway_get_each_event_once(
    plane: Any, since: int | None
) -> None:
    job = held_job("jobs.examples:countdown", steps=200, delay=0.005)
    channel = f"job:{job.job_id}"
    old_pid, new_pid = await restart_gateway(plane)
    clients = [RawClient(plane.ws_url, TOKEN) for _ in range(50)]
    await asyncio.gather(*(c.connect() for c in clients))  # at the same moment
    ids = await asyncio.gather(*(c.subscribe([channel], since=since) for c in clients))
    await asyncio.gather(*(c.acked(i) for c, i in zip(clients, ids, strict=True)))
    held_at = max(seqs_of(await hub_log([channel])))  # nothing on the channel until resume
    job.resume()
    outcomes = await asyncio.gather(
        *(c.wait_until(partial(completed, c, [channel]), 120) for c in clients),
        return_exceptions=True,
    )
    for outcome in outcomes:
        if isinstance(outcome, BaseException) and not isinstance(outcome, ServerClosed):
            raise outcome
    closed = [o.closed for o in outcomes if isinstance(o, ServerClosed)]
    still_open = [c for c, o in zip(clients, outcomes, strict=True) if o is None]
    closed += await all_read_a_marker(still_open)
    assert ray.get(job.result, timeout=120) == {"steps": 200}
    log = await hub_log([channel])
    assert log[0].type == "job.created", "the hub no longer retains the whole job"
    after = held_at if since is None else 0  # a live subscriber owes nothing from before
    audits = [c.audit(seqs_of(log), [channel], after) for c in still_open]
    duplicates = sum(len(c.duplicates()) for c in clients)
    await close_all(clients)

    bad = [a for a in audits if not a.ok]
    expected = len([s for s in seqs_of(log) if s > after])
    print(
        f"\n[fresh gateway, {'since=0' if since == 0 else 'live'}] replica pid {old_pid} -> "
        f"{new_pid}; 50 sockets, {expected} events each expected; "
        f"{len(closed)} closed by the server {dict(Counter((c.code, c.reason) for c in closed))}; "
        f"{sum(len(c.seqs([channel])) for c in clients)} read in all (expected "
        f"{50 * expected}); {duplicates} duplicates; of the {len(still_open)} still open: "
        f"{len(bad)} wrong, {sum(len(a.gaps) for a in audits)} gaps, "
        f"{sum(a.disorder for a in audits)} out of order"
    )
    assert not closed, f"{len(closed)} of 50 sockets closed by the server, e.g. {closed[0]}"
    assert not bad, f"{len(bad)} of 50 sockets, e.g.: {bad[0]}"


# --- 2. a reconnect storm --------------------------------------------------------------------


@dataclass
class StormClient:
    client: RawClient
    dwell: Callable[[], float] | None  # seconds before each abrupt drop; None: never drops
    server_closes: list[Closed] = field(default_factory=list)
    ack_waits: list[float] = field(default_factory=list)  # seconds from subscribe to ack


async def subscribed(rider: StormClient, request_id: str) -> bool:
    """Wait for this subscribe's ack; False when the server closed the socket first."""
    sent = time.monotonic()
    try:
        await rider.client.acked(request_id, timeout=120)
    except ServerClosed as e:
        rider.server_closes.append(e.closed)
        return False
    rider.ack_waits.append(time.monotonic() - sent)
    return True


async def ride(rider: StormClient, channels: list[str], deadline: float) -> None:
    """Follow ``channels`` (already subscribed) until every job completed: after each ack,
    read for ``dwell`` seconds, then drop abruptly and resume on a new socket from the last
    seq read; resume as well after a close by the server (counted: a reading client should
    get none). The dwell counts from the ack, so that each connection can make progress
    however long the server takes to answer."""
    client = rider.client
    while not completed(client, channels):
        wait = rider.dwell() if rider.dwell is not None else deadline
        try:
            await client.wait_until(lambda: completed(client, channels), wait)
            return
        except TimeoutError:
            if rider.dwell is None:
                raise
        except ServerClosed as e:
            rider.server_closes.append(e.closed)
        await reconnect(rider, channels)


async def reconnect(rider: StormClient, channels: list[str]) -> None:
    """Drop (if still open) and resume until a new socket's subscribe is acked."""
    while True:
        try:
            request_id = await rider.client.resume(channels)
        except ServerClosed as e:
            rider.server_closes.append(e.closed)
            continue
        if await subscribed(rider, request_id):
            return


@pytest.mark.timeout(600)
async def test_a_reconnect_storm_loses_and_repeats_nothing(plane: Any) -> None:
    """Half the clients come back under the same ``client_id`` (the server may still hold
    the old socket, which the new one replaces: the resume a browser session does); the
    other half come back as new clients (the server assigns an id, nothing is replaced).
    Both paths must give the same stream."""
    jobs = [
        held_job("jobs.examples:countdown", steps=2000, delay=0.002, job_name=f"storm-{i}")
        for i in range(3)
    ]
    channels = [f"job:{j.job_id}" for j in jobs]
    rng = random.Random(6455)
    tag = uuid.uuid4().hex[:6]
    riders = [
        StormClient(
            RawClient(plane.ws_url, TOKEN, client_id=f"storm-{tag}-{i}" if i % 2 == 0 else None),
            lambda: rng.uniform(0.2, 0.8),
        )
        for i in range(20)
    ]
    steady = StormClient(RawClient(plane.ws_url, TOKEN), None)
    riders.append(steady)
    await asyncio.gather(*(r.client.connect() for r in riders))
    ids = await asyncio.gather(*(r.client.subscribe(channels, since=0) for r in riders))
    assert all(await asyncio.gather(*(subscribed(r, i) for r, i in zip(riders, ids, strict=True))))
    for job in jobs:
        job.resume()
    started = time.monotonic()
    rides = [asyncio.ensure_future(ride(r, channels, 300)) for r in riders]
    await asyncio.wait(rides, timeout=300)
    stuck = [
        f"client {i}: {r.client.describe()}"
        + (f", {ride_.exception()!r}" if ride_.done() and ride_.exception() else "")
        for i, (r, ride_) in enumerate(zip(riders, rides, strict=True))
        if not ride_.done() or ride_.exception()
    ]
    for ride_ in rides:
        ride_.cancel()
    if stuck:
        states = [j.status().state.value for j in jobs]
        health = await healthz(plane)
        await close_all([r.client for r in riders])
        pytest.fail(
            f"{len(stuck)} of {len(riders)} clients did not see every job complete; jobs "
            f"{states}, gateway {health}:\n" + "\n".join(stuck)
        )
    storm_s = time.monotonic() - started
    clients = [r.client for r in riders]
    idle_closes = await all_read_a_marker(clients)  # closed after they had everything
    for rider in riders:
        rider.server_closes += [c for c in idle_closes if c in rider.client.closes]
    log = await hub_log(channels)
    assert {e.channel for e in log if e.type == "job.created"} == set(channels)
    audits = [c.audit(seqs_of(log), channels) for c in clients]
    await close_all(clients)
    assert [ray.get(j.result, timeout=60) for j in jobs] == [{"steps": 2000}] * 3

    reconnects = sum(c.connections - 1 for c in clients)
    waits = [w for r in riders for w in r.ack_waits]
    drops = sum(c.drops for c in clients)
    server_closes = [c for r in riders for c in r.server_closes]
    duplicates = sum(len(a.duplicates) for a in audits)
    gaps = sum(len(a.gaps) for a in audits)
    print(
        f"\n[reconnect storm] {len(log)} events in the hub's log of 3 jobs, {len(clients)} "
        f"clients ({storm_s:.1f} s): {sum(a.received for a in audits)} events read "
        f"(expected {len(clients) * len(log)}), {drops} abrupt drops, {reconnects} reconnects, "
        f"{gaps} gaps, {duplicates} duplicates, "
        f"{sum(a.disorder for a in audits)} out of order, "
        f"{sum(len(a.unexpected) for a in audits)} unexpected; acks after "
        f"{statistics.median(waits):.2f} s (median), {max(waits):.2f} s (max); server closes: "
        f"{dict(Counter(c.code for c in server_closes))} "
        f"(the steady client: {[(c.code, c.reason) for c in steady.server_closes]}, "
        f"{steady.client.connections} connection(s))"
    )
    bad = [(i, a) for i, a in enumerate(audits) if not a.ok]
    assert not bad, f"{len(bad)} clients wrong, e.g. client {bad[0][0]}: {bad[0][1]}"
    assert drops >= 20 and reconnects >= drops
    stories = [r.client.story(c) for r in riders for c in r.server_closes]
    assert not stories, "reading clients closed by the server:\n" + "\n".join(stories)


# --- 3. a slow consumer ----------------------------------------------------------------------


class RssSampler:
    """The peak resident memory of a process, sampled in the background."""

    def __init__(self, pid: int, every: float = 0.05) -> None:
        self._process = psutil.Process(pid)
        self._every = every
        self.before = self.peak = self._process.memory_info().rss
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._sample())

    async def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, self._process.memory_info().rss)
            await asyncio.sleep(self._every)

    async def stop(self) -> int:
        """Stop sampling; the resident memory now."""
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        after: int = self._process.memory_info().rss
        self.peak = max(self.peak, after)
        return after


@dataclass
class SlowWatch:
    """When the gateway let the slow socket go, as /healthz tells (monotonic times)."""

    counted_at: float | None = None  # ``slow_closed`` went up
    forgotten_at: float | None = None  # ``connections`` went down


async def watch_slow_close(plane: Any, health: dict[str, Any], timeout: float) -> SlowWatch:
    """Poll /healthz until the slow close is counted, or a little after the socket count
    fell without it (a close by another path)."""
    seen = SlowWatch()
    slow_before, connections_before = health.get("slow_closed", 0), health["connections"]
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            while True:
                now_health = await healthz(plane)
                now = time.monotonic()
                if seen.counted_at is None and now_health.get("slow_closed", 0) > slow_before:
                    seen.counted_at = now
                if seen.forgotten_at is None and now_health["connections"] < connections_before:
                    seen.forgotten_at = now
                if seen.counted_at is not None or (
                    seen.forgotten_at is not None and now - seen.forgotten_at > 5.0
                ):
                    return seen
                await asyncio.sleep(POLL)
    return seen


@pytest.mark.timeout(600)
async def test_a_client_that_stops_reading_is_closed_as_slow_while_a_fast_one_gets_everything(
    plane: Any,
) -> None:
    steps = min(15_000, HISTORY // 2)  # the whole job stays in the tests' history
    job = held_job("jobs.examples:countdown", steps=steps, delay=0)
    channel = f"job:{job.job_id}"
    fast = RawClient(plane.ws_url, TOKEN)
    # A small TCP window and a one-message queue: once it stops reading, the TCP socket
    # stops being read too, and the server's sends back up to the gateway.
    slow = RawClient(plane.ws_url, TOKEN, max_queue=1, rcvbuf=8192)
    await asyncio.gather(fast.connect(), slow.connect())
    await fast.acked(await fast.subscribe([channel], since=0))
    await slow.acked(await slow.subscribe([channel]))
    slow.stop_reading()
    health = await healthz(plane)
    rss = RssSampler(health["pid"])
    rss.start()
    started = time.monotonic()
    job.resume()

    async def slow_side() -> tuple[SlowWatch, float]:
        # Read again once the slow close is counted: a close frame the client does not
        # read within the session's close_timeout (10 s) aborts the connection instead.
        seen = await watch_slow_close(plane, health, 180)
        slow.resume_reading()  # what was buffered, then the close frame
        return seen, time.monotonic()

    watch = asyncio.ensure_future(slow_side())
    fast_closed: Closed | None = None
    try:
        await fast.wait_until(lambda: completed(fast, [channel]), 300)
        fast_closed = next(iter(await all_read_a_marker([fast])), None)
    except ServerClosed as e:
        fast_closed = e.closed
    fast_s = time.monotonic() - started
    slow_seen, reading_again = await watch
    rss_after = await rss.stop()
    slow_close = await slow.wait_closed(180)
    log = await hub_log([channel])
    assert log[0].type == "job.created", "the hub no longer retains the whole job"
    audit = fast.audit(seqs_of(log), [channel])
    slow_audit = slow.audit(seqs_of(log), [channel])
    await close_all([fast, slow])

    mb = 1024 * 1024

    def since_start(at: float | None) -> str:
        return f"{at - started:.2f} s" if at is not None else "never (180 s)"

    print(
        f"\n[slow consumer] job of {len(log)} events; after the job started, the gateway "
        f"counted a slow close at {since_start(slow_seen.counted_at)}, its socket count fell at "
        f"{since_start(slow_seen.forgotten_at)}"
        + f"; it read again {reading_again - started:.2f} s after the job started: "
        f"{slow_audit.received} events, then close {slow_close.code} {slow_close.reason!r} "
        f"{slow_close.at - started:.2f} s after the job started; "
        f"fast client: {audit} in {fast_s:.2f} s"
        + (
            f", CLOSED by the server {fast_closed.code} {fast_closed.reason!r}"
            if fast_closed
            else ""
        )
        + f"; gateway RSS before {rss.before / mb:.0f} MB, peak {rss.peak / mb:.0f} MB, "
        f"after {rss_after / mb:.0f} MB"
    )
    assert fast_closed is None, f"the fast client was closed: {fast_closed}"
    assert audit.ok, str(audit)
    assert slow_seen.counted_at is not None, "no slow close counted in 180 s"
    assert slow_close.by_server and slow_close.code == 4008, slow_close
    assert not slow_audit.duplicates and not slow_audit.disorder, str(slow_audit)
    assert rss.peak - rss.before < 300 * mb


# --- 4. a client that only reads -------------------------------------------------------------

STAY = max(35.0, 3 * (HEARTBEAT_INTERVAL + HEARTBEAT_TIMEOUT) + OLD_APP_HEARTBEAT_TIMEOUT)


@pytest.mark.timeout(300)
async def test_a_reader_that_answers_nothing_is_never_closed(plane: Any) -> None:
    steps = int(STAY) + 5  # one event a second, for longer than STAY
    job = control_plane.submit("jobs.examples:countdown", steps=steps, delay=1.0)
    channel = f"job:{job.job_id}"
    client = RawClient(plane.ws_url, TOKEN)
    await client.connect()
    started = time.monotonic()
    await client.acked(await client.subscribe([channel], since=0))
    closed: Closed | None = None
    try:
        await client.wait_until(lambda: completed(client, [channel]), STAY + 180)
    except ServerClosed as e:
        closed = e.closed
    connected_s = (closed.at if closed else time.monotonic()) - started
    print(
        f"\n[plain reader] connected {connected_s:.1f} s (needed {STAY:.0f} s), "
        f"{len(client.seqs([channel]))} events read"
        + (f", CLOSED by the server {closed.code} {closed.reason!r}" if closed else "")
    )
    assert closed is None, f"closed after {connected_s:.1f} s: {closed}"
    assert connected_s >= STAY  # the job lasts that long
    await client.acked(await client.subscribe(["system"]))  # still served
    assert not await all_read_a_marker([client])
    log = await hub_log([channel])
    audit = client.audit(seqs_of(log), [channel])
    await client.close()
    assert audit.ok, str(audit)


# --- 5. a peer that vanishes -----------------------------------------------------------------


class FreezingProxy:
    """A TCP proxy on 127.0.0.1 that can freeze: it stops forwarding and reading both ways
    and keeps both connections open (no FIN, no RST), as if the peer had vanished."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._server: asyncio.Server | None = None
        self._pumps: set[asyncio.Task[None]] = set()
        self.downstream: list[asyncio.StreamWriter] = []
        self.upstream: list[asyncio.StreamWriter] = []
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self._target)
        self.downstream.append(writer)
        self.upstream.append(up_writer)
        loop = asyncio.get_running_loop()
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = loop.create_task(self._pump(src, dst))
            self._pumps.add(task)
            task.add_done_callback(self._pumps.discard)

    @staticmethod
    async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        while chunk := await src.read(65536):
            dst.write(chunk)
            await dst.drain()

    def freeze(self) -> None:
        for task in list(self._pumps):
            task.cancel()
        for writer in self.downstream + self.upstream:
            transport = writer.transport
            assert isinstance(transport, asyncio.ReadTransport)
            transport.pause_reading()

    def upstream_state(self) -> int:
        """The TCP state of the proxy's socket to the gateway (1 while established)."""
        sock = self.upstream[0].get_extra_info("socket")
        info: bytes = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)
        return info[0]

    async def close(self) -> None:
        for task in list(self._pumps):
            task.cancel()
        for writer in self.downstream + self.upstream:
            writer.transport.abort()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


async def quiet_connections(plane: Any, timeout: float = 60.0) -> int:
    """/healthz's socket count once earlier tests' sockets are gone (or what it is then)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            while (await healthz(plane))["connections"] > 0:
                await asyncio.sleep(POLL)
    count: int = (await healthz(plane))["connections"]
    return count


@pytest.mark.timeout(300)
async def test_a_peer_that_vanishes_without_fin_is_closed_within_the_ping_timeout(
    plane: Any,
) -> None:
    bound = 4 * (HEARTBEAT_INTERVAL + HEARTBEAT_TIMEOUT)
    base = await quiet_connections(plane)
    gateway = urlsplit(plane.base_url)
    assert gateway.hostname is not None and gateway.port is not None
    proxy = FreezingProxy(gateway.hostname, gateway.port)
    await proxy.start()
    client = RawClient(f"ws://127.0.0.1:{proxy.port}/ws", TOKEN)
    await client.connect()
    await client.acked(await client.subscribe([f"job:vanished-{uuid.uuid4().hex[:8]}"]))
    if base:  # earlier sockets still registered: they may leave while this one is watched
        print(f"\n[vanished peer] note: {base} earlier sockets still registered at /healthz")
    assert (await healthz(plane))["connections"] >= 1
    assert proxy.upstream_state() == TCP_ESTABLISHED
    proxy.freeze()
    frozen_at = time.monotonic()
    tcp_closed_s: float | None = None
    forgotten_s: float | None = None
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(bound + 30):  # past the bound, to report how late
            while tcp_closed_s is None or forgotten_s is None:
                now = time.monotonic() - frozen_at
                if tcp_closed_s is None and proxy.upstream_state() != TCP_ESTABLISHED:
                    tcp_closed_s = now
                if forgotten_s is None and (await healthz(plane))["connections"] <= base:
                    forgotten_s = now
                await asyncio.sleep(POLL)
    state = proxy.upstream_state()
    client.drop()
    await proxy.close()

    def shown(seconds: float | None) -> str:
        return f"{seconds:.1f} s" if seconds is not None else f"not within {bound + 30:.0f} s"

    print(
        f"\n[vanished peer] after the freeze: the gateway closed the TCP connection "
        f"{shown(tcp_closed_s)} (tcp state now {state}), /healthz connections back to "
        f"{base}: {shown(forgotten_s)}; bound {bound:.0f} s"
    )
    assert tcp_closed_s is not None and tcp_closed_s <= bound, shown(tcp_closed_s)
    assert forgotten_s is not None and forgotten_s <= bound, shown(forgotten_s)
