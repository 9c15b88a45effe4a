"""The event path, measured: ingest into the hub, one job to one socket, one job to many.

Each scenario returns its rows, the baseline measured in the same run beside each figure.
One job to one socket is measured paced (the highest rate sustained, latency at half of it)
and unpaced (events/s on the wire while a job emits flat out, every event counted).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import ray

import control_plane
from benchmarks import bodies
from benchmarks.fanout_clients import ClientFleet, FleetNotReady
from benchmarks.harness import (
    BASELINE_TITLE,
    GATEWAY_TITLE,
    Bench,
    Client,
    Row,
    cancel_all,
    close_all,
    latency_rows,
    ms,
    note,
    one_process,
    open_many,
    percentile,
    processes,
    rss,
    submit_started,
    wait_until,
)
from control_plane.actors import runtime

LOAD_JOBS = 4
INGEST_BATCH = 1000  # the emitter's max_batch: what one hub call carries when a job is flat out
IN_FLIGHT = 4  # the emitter's max_in_flight
KEEPS_UP_P99 = 0.25  # a ramp step counts as sustained when all of it arrives with p99 below


@dataclass(frozen=True)
class EventSizes:
    window: float  # seconds each throughput or latency window lasts
    ramp: tuple[float, ...]  # events/s steps for the one-socket ramp
    ramp_step: float  # seconds per ramp step
    sockets: int  # fan-out sockets
    fanout_rate: float  # events/s of the fanned-out job
    # Fan-out at scale: this many sockets at 1 event/s each (one job at 1 event/s, every
    # socket on its channel), the clients in ``scale_processes`` processes of their own.
    scale_sockets: int
    scale_processes: int
    ingest_per_job: int  # events each ingest job emits
    # Events the unpaced job (and each unpaced baseline) pushes to one socket: fewer than
    # the hub keeps (100,000), since the job outruns the socket and a socket further behind
    # than the hub's history cannot be given what it missed, by design.
    unpaced: int
    unpaced_rounds: int  # unpaced runs of each side, interleaved; the median is reported
    recovery_events: int  # events in the log of the hub whose restart is timed


QUICK = EventSizes(
    window=1.0,
    ramp=(4000, 8000, 16000, 32000, 64000),
    ramp_step=0.7,
    sockets=100,
    fanout_rate=10.0,
    scale_sockets=200,
    scale_processes=1,
    ingest_per_job=25_000,
    unpaced=20_000,
    unpaced_rounds=1,
    recovery_events=50_000,
)
FULL = EventSizes(
    window=5.0,
    ramp=(2000, 4000, 8000, 12000, 16000, 24000, 32000, 48000, 64000),
    ramp_step=3.0,
    sockets=1000,
    fanout_rate=10.0,
    scale_sockets=10_000,
    scale_processes=2,
    ingest_per_job=500_000,
    unpaced=80_000,
    unpaced_rounds=5,
    recovery_events=1_000_000,
)


# --- ingest ---------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def paced_load(bench: Bench, rate: float, seconds: float) -> AsyncIterator[None]:
    """``LOAD_JOBS`` jobs emitting ``rate`` events/s between them; cancelled on exit."""
    handles = await submit_started(
        bench, bodies.ticks, LOAD_JOBS, rates=[rate / LOAD_JOBS], step=seconds
    )
    try:
        yield
    finally:
        await cancel_all(handles)


async def _rate(
    sample: Callable[[], Awaitable[int]], start: int, total: int, timeout: float
) -> float:
    """Poll a count until it has grown by ``total``; the rate between its 10 % and 90 % marks
    (start-up and wind-down left out)."""
    low, high = start + 0.1 * total, start + 0.9 * total
    mark: tuple[float, int] | None = None
    deadline = time.monotonic() + timeout
    while True:
        n = await sample()
        now = time.time()
        if mark is None and n >= low:
            mark = (now, n)
        elif mark is not None and n >= high and now > mark[0]:
            return (n - mark[1]) / (now - mark[0])
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {n - start} of {total} events arrived in {timeout:.0f} s")
        await asyncio.sleep(0.02)


async def _jobs_rate(bench: Bench, count: int) -> float:
    """Events/s into the hub from LOAD_JOBS jobs emitting ``count`` each flat out."""
    hub = runtime.hub()
    epoch, head = await hub.head.remote()
    gate = bodies.GateActor.remote()
    handles = await submit_started(bench, bodies.burst, LOAD_JOBS, count=count, gate=gate)

    async def hub_head() -> int:
        now_epoch, now_head = await hub.head.remote()
        if now_epoch != epoch:
            raise RuntimeError("the hub restarted during the ingest run (a new epoch)")
        return int(now_head)

    try:
        await gate.open.remote()
        rate = await _rate(hub_head, head, LOAD_JOBS * count, timeout=120)
        jobs_rss = [rss(p) for p in processes("JobActor")]
        hub_rss = rss(one_process("ray::EventHub"))
        note(
            f"RSS at 90 %: job actors up to {max(jobs_rss, default=0) / 2**20:.0f} MB, "
            f"hub {hub_rss / 2**20:.0f} MB"
        )
    finally:
        await cancel_all(handles)
        ray.kill(gate)
    return rate


async def ingest(bench: Bench, sizes: EventSizes) -> list[Row]:
    """The hub's ingest with its SQLite log and without it (``set_durable``), one after the
    other on the same hub and jobs, and a bare counting actor's."""
    hub = runtime.hub()
    count = sizes.ingest_per_job
    await hub.set_durable.remote(False)
    try:
        note("the in-memory hub (its log file not written):")
        in_memory = await _jobs_rate(bench, count)
    finally:
        await hub.set_durable.remote(True)
    note("the hub with its SQLite log:")
    durable = await _jobs_rate(bench, count)
    stored = await hub.log_stats.remote(frames=True)
    note(
        f"log: {stored['bytes'] / 2**20:.0f} MB for {stored['events']} events retained "
        f"({stored['frame_bytes'] / max(1, stored['events']):.0f} bytes/event as frames)"
    )

    counter = bodies.CounterActor.remote()
    publishers = [bodies.PublisherActor.remote() for _ in range(LOAD_JOBS)]
    await asyncio.gather(*(a.__ray_ready__.remote() for a in [counter, *publishers]))
    runs = [p.run.remote(counter, count, INGEST_BATCH, IN_FLIGHT) for p in publishers]
    try:
        base = await _rate(counter.count.remote, 0, LOAD_JOBS * count, timeout=120)
        await asyncio.gather(*runs)
    finally:
        for actor in [counter, *publishers]:
            ray.kill(actor)
    events = max(1, stored["events"])
    return [
        Row(
            f"ingest: events/s into the hub from {LOAD_JOBS} jobs emitting flat out",
            in_memory,
            "events/s",
            f"{LOAD_JOBS} callers, batches of {INGEST_BATCH} into an actor that counts",
            base,
        ),
        Row(
            f"ingest with the SQLite log: events/s into the hub from {LOAD_JOBS} jobs",
            durable,
            "events/s",
            "the same hub and jobs with the log not written (in memory only), same run",
            in_memory,
        ),
        Row(
            "event log: bytes per event on disk (SQLite, WAL, batches compressed)",
            stored["bytes"] / events,
            "bytes/event",
            "the same events as their JSON frames",
            stored["frame_bytes"] / events,
            higher_is_better=False,
        ),
    ]


# --- end to end: one job, one socket ----------------------------------------------------------


def verdict(client: Client, s: int, rate: float, step: float) -> str | None:
    """None when ramp step ``s`` arrived whole with p99 under KEEPS_UP_P99, else why not."""
    got = client.latencies(s)
    expected = int(rate * step)
    p99 = percentile(got, 99)
    if len(got) < expected or not p99 <= KEEPS_UP_P99:
        return f"{rate:.0f}/s: {len(got)}/{expected} arrived, p99 {ms(p99):.0f} ms"
    return None


def sustained(client: Client, ramp: tuple[float, ...], step: float) -> tuple[float, str]:
    """The highest ramp rate sustained (every step up to it too), and why the next was not."""
    best = 0.0
    for s, rate in enumerate(ramp):
        why = verdict(client, s, rate, step)
        if why is not None:
            return best, why
        best = rate
    return best, "every step kept up"


async def follow_ramp(client: Client, ramp: tuple[float, ...], step: float) -> None:
    """Return once each step was judged, one failed, or the socket closed: a ramp stops at
    its first failed step instead of pushing a backlog through the steps above it."""
    await wait_until(lambda: client.ticks > 0 or client.close_code is not None, 60, "a tick")
    for s, rate in enumerate(ramp):
        end = client.first_tick_at + (s + 1) * step + 2 * KEEPS_UP_P99
        with contextlib.suppress(TimeoutError):
            await wait_until(lambda: client.close_code is not None, end - time.time(), "")
        if client.close_code is not None or verdict(client, s, rate, step) is not None:
            return


async def ramp_ours(bench: Bench, ramp: tuple[float, ...], step: float) -> Client:
    """One socket on one job that emits at each ramp rate in turn; returns the client."""
    client = await Client.open(bench.ws_url, bench.token)
    welcome = await client.wait_type("welcome")
    client.recording = True
    job = await asyncio.to_thread(
        control_plane.submit, bodies.ticks, rates=list(ramp), step=step, warmup=1.0
    )
    try:
        # ``since`` replays whatever the job emitted before the subscription landed.
        await client.subscribe(f"job:{job.job_id}", since=welcome["data"]["seq"])
        await follow_ramp(client, ramp, step)
    finally:
        client.recording = False
        with contextlib.suppress(Exception):
            await asyncio.to_thread(job.cancel)
        await client.close()
    return client


async def ramp_baseline(bench: Bench, ramp: tuple[float, ...], step: float) -> Client:
    client = await Client.open(bench.baseline_url, None)
    client.recording = True
    try:
        await client.send({"mode": "paced", "rates": list(ramp), "step": step})
        await follow_ramp(client, ramp, step)
    finally:
        client.recording = False
        await client.close()
    return client


async def paced_window(bench: Bench, rate: float, seconds: float, baseline: bool) -> list[float]:
    """Latencies of ``rate`` events/s for ``seconds`` to one socket (ours or the baseline)."""
    client = await (ramp_baseline if baseline else ramp_ours)(bench, (rate,), seconds)
    if not baseline and client.close_code not in (None, 1000):
        raise RuntimeError(f"the socket was closed with {client.close_code}")
    return client.latencies()


async def end_to_end(bench: Bench, sizes: EventSizes) -> list[Row]:
    ours_ramp = await ramp_ours(bench, sizes.ramp, sizes.ramp_step)
    ours, why = sustained(ours_ramp, sizes.ramp, sizes.ramp_step)
    note(f"ours: sustained {ours:.0f}/s; above it, {why}; close code {ours_ramp.close_code}")
    base_ramp = await ramp_baseline(bench, sizes.ramp, sizes.ramp_step)
    base, base_why = sustained(base_ramp, sizes.ramp, sizes.ramp_step)
    note(f"baseline: sustained {base:.0f}/s; above it, {base_why}")
    rows = [
        Row(
            "end to end: events/s one job → one socket, sustained (all arrive, p99 ≤ 250 ms)",
            ours,
            "events/s",
            "a trivial Serve WebSocket endpoint, the same paced ramp",
            base,
        )
    ]
    if ours <= 0:
        raise RuntimeError(f"no ramp step was sustained: {why}")
    half = ours / 2
    mine = await paced_window(bench, half, sizes.window, baseline=False)
    theirs = await paced_window(bench, half, sizes.window, baseline=True)
    rows += latency_rows(
        lambda p: f"end to end: latency p{p} at {half:.0f} events/s (half the sustained rate)",
        mine,
        "the trivial Serve WebSocket endpoint at the same rate",
        theirs,
    )
    return rows


# --- end to end, unpaced: one job flat out, one socket -----------------------------------------


def wire_rate(client: Client, expected: int, who: str) -> float:
    """Events/s the client received between the arrivals of the 10 % and the 90 % marks
    (start-up and wind-down left out), once it is sure that each of the ``expected``
    progress events arrived, once and in seq order; otherwise it raises, naming ``who``."""
    seqs = client.progress_seqs
    unique = len(set(seqs))
    if unique != expected or len(seqs) != expected:
        raise RuntimeError(
            f"{who}: {unique} of {expected} events arrived, {len(seqs) - unique} of them twice"
        )
    if any(b < a for a, b in itertools.pairwise(seqs)):
        raise RuntimeError(f"{who}: events arrived out of seq order")
    times = client.progress_at
    low, high = expected // 10, expected * 9 // 10
    return (high - low) / max(times[high] - times[low], 1e-6)


def _burst_timeout(count: int) -> float:
    return 60.0 + count / 1000  # generous: it only ends a run that stopped


async def unpaced_ours(bench: Bench, count: int) -> float:
    """One job emitting ``count`` progress events flat out (``bodies.burst``: ``ctx.progress``
    in a loop) to one socket subscribed to its channel. The job waits at a gate until the
    subscription is acknowledged, so every event goes the live way: job → hub → gateway
    replica → socket. Ends at ``job.completed``, which comes after the last progress event."""
    gate = bodies.GateActor.remote()
    client = await Client.open(bench.ws_url, bench.token)
    job: control_plane.JobHandle | None = None
    try:
        await client.wait_type("welcome")
        job = await asyncio.to_thread(control_plane.submit, bodies.burst, count=count, gate=gate)
        await client.subscribe(f"job:{job.job_id}")
        await gate.open.remote()
        await client.wait_type("job.completed", job.job_id, timeout=_burst_timeout(count))
    finally:
        if job is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(job.cancel)
        await client.close()
        ray.kill(gate)
    return wire_rate(client, count, "ours")


async def unpaced_baseline(url: str, count: int, who: str) -> float:
    """The same count and frames pushed by a baseline endpoint, as fast as the socket takes
    them, to the same client; ends at the baseline's ``bench.done``."""
    client = await Client.open(url, None)
    try:
        await client.send({"mode": "burst", "count": count})
        await client.wait_type("bench.done", timeout=_burst_timeout(count))
    finally:
        await client.close()
    return wire_rate(client, count, who)


@contextlib.asynccontextmanager
async def bare_uvicorn() -> AsyncIterator[str]:
    """The bare uvicorn push endpoint (``bodies.BarePush``) in its own process; its URL."""
    server = bodies.BarePushActor.remote()
    try:
        port = await server.start.remote()
        yield f"ws://127.0.0.1:{port}/ws"
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.stop.remote(), 10)
        ray.kill(server)


async def unpaced(bench: Bench, sizes: EventSizes) -> list[Row]:
    """Ours, the bare uvicorn endpoint and the Serve-proxied one, each ``unpaced_rounds``
    times in turn (so that the load of others on the machine falls on all three alike);
    the median of each, every run checked to have received every event once."""
    n, rounds = sizes.unpaced, sizes.unpaced_rounds
    ours: list[float] = []
    bare: list[float] = []
    proxied: list[float] = []
    async with bare_uvicorn() as bare_url:
        for _ in range(rounds):
            ours.append(await unpaced_ours(bench, n))
            bare.append(await unpaced_baseline(bare_url, n, "bare uvicorn"))
            proxied.append(await unpaced_baseline(bench.baseline_url, n, "Serve-proxied"))
    for who, figures in (("ours", ours), ("bare uvicorn", bare), ("Serve-proxied", proxied)):
        note(f"{who}: {', '.join(f'{x:,.0f}' for x in figures)} events/s")
    name = "end to end: events/s one job → one socket, unpaced"
    what = f"pushing {n:,} pre-encoded job.progress frames unpaced to one socket"
    median = f"median of {rounds}, all {n:,} events arrived once"
    return [
        Row(
            f"{name} ({median}; against bare uvicorn)",
            statistics.median(ours),
            "events/s",
            f"a bare FastAPI endpoint on uvicorn (the gateway's uvicorn settings) {what}",
            statistics.median(bare),
        ),
        Row(
            f"{name} ({median}; against Serve's proxy)",
            statistics.median(ours),
            "events/s",
            f"a trivial Serve WebSocket endpoint behind Serve's proxy {what}",
            statistics.median(proxied),
        ),
    ]


# --- fan-out: one job, many sockets ----------------------------------------------------------


async def _fanout_window(clients: list[Client], seconds: float) -> list[float]:
    await asyncio.sleep(1.0)
    for c in clients:
        c.recording = True
    await asyncio.sleep(seconds)
    for c in clients:
        c.recording = False
    closed = [c for c in clients if c.close_code is not None]
    if closed:
        codes = sorted({c.close_code for c in closed if c.close_code is not None})
        errors = sorted({repr(c.error) for c in closed if c.error})
        raise RuntimeError(f"{len(closed)} fan-out sockets closed, codes {codes} {errors}")
    return [lat for c in clients for lat in c.latencies()]


async def fan_out(bench: Bench, sizes: EventSizes) -> list[Row]:
    n, rate, window = sizes.sockets, sizes.fanout_rate, sizes.window * 2
    gateway = one_process(GATEWAY_TITLE)
    proxy = one_process("ray::ProxyActor")
    before, proxy_before = rss(gateway), rss(proxy)
    t0 = time.monotonic()
    clients = await open_many(bench.ws_url, bench.token, n)
    note(f"opened {n} sockets in {time.monotonic() - t0:.1f} s")
    job = await asyncio.to_thread(
        control_plane.submit, bodies.ticks, rates=[rate], step=3600.0, warmup=0.0
    )
    try:
        gate = asyncio.Semaphore(100)

        async def subscribe(c: Client) -> None:
            async with gate:
                await c.subscribe(f"job:{job.job_id}")

        await asyncio.gather(*(subscribe(c) for c in clients))
        ours = await _fanout_window(clients, window)
        ours_mem = (rss(gateway) - before) / n
        note(
            f"ours: {len(ours)} of about {n * rate * window:.0f} events timed; Serve's proxy "
            f"grew {(rss(proxy) - proxy_before) / n / 1024:.0f} KB per socket"
        )
    finally:
        with contextlib.suppress(Exception):
            await asyncio.to_thread(job.cancel)
        await close_all(clients)

    baseline = one_process(BASELINE_TITLE)
    before = rss(baseline)
    clients = await open_many(bench.baseline_url, None, n)
    try:
        gate = asyncio.Semaphore(100)

        async def start(c: Client) -> None:
            async with gate:
                await c.send({"mode": "fanout", "rate": rate})
                await c.wait_type("ack")

        await asyncio.gather(*(start(c) for c in clients))
        theirs = await _fanout_window(clients, window)
        theirs_mem = (rss(baseline) - before) / n
    finally:
        await close_all(clients)
    base = "a trivial Serve WebSocket endpoint broadcasting to as many sockets"
    rows = latency_rows(
        lambda p: f"fan-out: latency p{p}, {n} sockets on one job at {rate:.0f} events/s",
        ours,
        base,
        theirs,
    )
    rows.append(
        Row(
            f"fan-out: gateway replica memory per socket ({n} sockets, RSS growth / sockets)",
            ours_mem / 1024,
            "KB",
            base,
            theirs_mem / 1024,
            higher_is_better=False,
        )
    )
    return rows


# --- fan-out at scale: many sockets at 1 event/s each -----------------------------------------

SCALE_RATE = 1.0  # events/s each socket gets


async def _no_sockets_left(bench: Bench, timeout: float = 60.0) -> None:
    """Wait until the gateway holds no socket of an earlier scenario."""
    url = bench.ws_url.replace("ws://", "http://").rsplit("/ws", 1)[0] + "/healthz"
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as http:
        while (await http.get(url)).json()["connections"]:
            if time.monotonic() > deadline:
                raise TimeoutError("sockets of earlier scenarios are still open")
            await asyncio.sleep(0.5)


FLEET_TRIES = 2  # a fleet whose sockets did not all open is started once more (noted)


async def _fleet_run(
    url: str, channel: str, token: str | None, sizes: EventSizes, server: Any, label: str
) -> tuple[list[float], float]:
    """Open ``scale_sockets`` sockets on ``url`` subscribed to ``channel`` (clients in
    processes of their own), record ``window * 2`` seconds of ticks after a second to settle,
    and close them: the latencies, and the growth of ``server``'s RSS per socket (bytes).
    Raises if a socket closed meanwhile."""
    n = sizes.scale_sockets
    fleet = ClientFleet(url, n, channel, token, sizes.scale_processes)
    before = rss(server)
    try:
        t0 = time.monotonic()
        await fleet.start(timeout=600)
        note(f"{label}: opened and subscribed {n} sockets in {time.monotonic() - t0:.1f} s")
        per_socket = (rss(server) - before) / n
        await asyncio.sleep(1.0)
        await fleet.record()
        await asyncio.sleep(sizes.window * 2)
        result = await fleet.stop()
    finally:
        fleet.kill()
    if result["retries"]:
        note(f"{label}: {result['retries']} opening handshakes timed out and were tried again")
    if result["closed"]:
        raise RuntimeError(f"{result['closed']} fan-out sockets closed, codes {result['codes']}")
    latencies: list[float] = result["latencies"]
    return latencies, per_socket


async def fan_out_scale(bench: Bench, sizes: EventSizes) -> list[Row]:
    """``scale_sockets`` sockets on one replica, each getting 1 event/s: one job emits a
    ``bench.tick`` a second and every socket subscribes to its channel, so each event is
    one frame to every socket (``scale_sockets`` frames/s in all). The clients run in
    ``scale_processes`` processes of their own (raw ``websockets`` clients,
    ``benchmarks/fanout_clients.py``), so that they do not starve this process or the
    replica of the loop. Beside it: a bare FastAPI endpoint on the gateway's uvicorn
    settings that sends each tick to every socket (Serve's proxy does not hold 10,000
    sockets: the 1,000-socket rows above compare with it)."""
    n, window = sizes.scale_sockets, sizes.window * 2
    await _no_sockets_left(bench)  # the replica takes 10,000 (max_connections): all ours
    job = await asyncio.to_thread(
        control_plane.submit, bodies.ticks, rates=[SCALE_RATE], step=3600.0, warmup=0.0
    )
    try:
        for attempt in range(1, FLEET_TRIES + 1):
            try:
                ours, ours_mem = await _fleet_run(
                    bench.ws_url,
                    f"job:{job.job_id}",
                    bench.token,
                    sizes,
                    one_process(GATEWAY_TITLE),
                    "ours",
                )
                break
            except FleetNotReady as e:
                if attempt == FLEET_TRIES:
                    raise
                note(f"ours: {e}; its sockets are closed and opened again")
                await _no_sockets_left(bench)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.to_thread(job.cancel)
    await _no_sockets_left(bench)

    for attempt in range(1, FLEET_TRIES + 1):
        server = bodies.BarePushActor.remote()
        try:
            port = await server.start.remote(SCALE_RATE)
            url = f"ws://127.0.0.1:{port}/ws"
            theirs, theirs_mem = await _fleet_run(
                url, "ticks", None, sizes, one_process("BarePush"), "baseline"
            )
            break
        except FleetNotReady as e:
            if attempt == FLEET_TRIES:
                raise
            note(f"baseline: {e}; a new server and clients start again")
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.stop.remote(), 10)
            ray.kill(server)
    note(f"ours: {len(ours)} of about {n * SCALE_RATE * window:.0f} events timed")
    base = (
        "a bare FastAPI endpoint on uvicorn (the gateway's settings) sending each event "
        "to every socket"
    )
    rows = latency_rows(
        lambda p: f"fan-out: latency p{p}, {n} sockets on one replica at 1 event/s each",
        ours,
        base,
        theirs,
    )
    rows.append(
        Row(
            f"fan-out: gateway replica memory per socket ({n} sockets at 1 event/s, "
            "RSS growth / sockets)",
            ours_mem / 1024,
            "KB",
            base,
            theirs_mem / 1024,
            higher_is_better=False,
        )
    )
    return rows
