"""Commands and job life, measured: pause round trips, pushed news against polled news, and
submitting jobs; each beside a baseline measured in the same run (Ray Jobs, bare actors).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import shlex
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import ray

import control_plane
from benchmarks import bodies
from benchmarks.events import paced_load
from benchmarks.harness import (
    RECEIVED,
    Bench,
    Client,
    Row,
    cancel_all,
    latency_rows,
    ms,
    note,
    percentile,
    processes,
    submit_started,
    uss,
    wait_until,
)
from control_plane.actors import runtime

RAY_JOBS_POLL = 1.0  # seconds: how Ray's docs poll get_job_status
FAST_POLL = 0.01  # seconds: how often the stop baseline looks, to time the stop, not the look


@dataclass(frozen=True)
class ControlSizes:
    pauses: int  # pause round trips, idle and again under load
    ray_job_stops: int  # Ray Jobs stopped for the pause baseline
    watchers: int  # state changes timed for push vs poll (each side)
    submits: int  # sequential submits timed
    capacity: int  # idle jobs started at once (the cap)


QUICK = ControlSizes(5, 1, 2, 2, 4)
FULL = ControlSizes(100, 8, 10, 40, 150)


def _python(code: str) -> str:
    return f"{shlex.quote(sys.executable)} -c {shlex.quote(code)}"


async def _statuses(client: Any, ids: list[str]) -> list[str]:
    return [str(s) for s in await asyncio.gather(*(_call(client.get_job_status, i) for i in ids))]


async def _call(fn: Any, *args: Any) -> Any:
    return await asyncio.to_thread(fn, *args)


async def _submit_ray_job(client: Any, entrypoint: str, timeout: float = 120) -> str:
    """Submit a Ray Job, waiting for the dashboard's job agent, which starts after Ray does."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            job_id: str = await asyncio.to_thread(lambda: client.submit_job(entrypoint=entrypoint))
            return job_id
        except RuntimeError as e:
            if "No available agent" not in str(e) or time.monotonic() > deadline:
                raise
            await asyncio.sleep(1.0)


async def _ray_jobs_running(client: Any, ids: list[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        statuses = await _statuses(client, ids)
        if all(s.endswith("RUNNING") for s in statuses):
            return
        if any(s.endswith(("FAILED", "STOPPED", "SUCCEEDED")) for s in statuses):
            raise RuntimeError(f"a Ray Job ended before it ran: {statuses}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"Ray Jobs did not all start: {statuses}")
        await asyncio.sleep(0.1)


# --- pause ----------------------------------------------------------------------------------


@dataclass
class PauseRun:
    times: list[float]  # seconds per round trip; inf for a job.paused that never came
    lost: int = 0
    reconnects: int = 0  # sockets the gateway closed under us (and we opened again)
    hops: dict[str, list[float]] = field(default_factory=dict)  # see _hop_times
    # per round trip, seconds from the command's send to the job.paused's timestamp (made at
    # the body's checkpoint), and from that to its arrival on the socket (ms resolution)
    legs: list[tuple[float, float]] = field(default_factory=list)


def _made_at(frame: dict[str, Any]) -> float:
    """An event's timestamp (when the job made it), in seconds since the epoch."""
    return datetime.fromisoformat(str(frame["timestamp"]).replace("Z", "+00:00")).timestamp()


HOP_CALLS = 30  # calls timed on each hop of a pause


async def _hop_times(job: Any, count: int) -> dict[str, list[float]]:
    """Seconds for a trivial call to each actor a pause goes through, one at a time: where
    a round trip's time goes (the socket → gateway and gateway → socket legs are the
    rest)."""
    hub, controller = runtime.hub(), runtime.controller()
    calls = {
        "hub (head)": lambda: hub.head.remote(),
        "controller (get_status)": lambda: controller.get_status.remote(job.job_id),
        "job actor (status)": lambda: job.actor.status.remote(),
    }
    times: dict[str, list[float]] = {}
    for hop, call in calls.items():
        times[hop] = []
        for _ in range(count):
            t0 = time.perf_counter()
            await call()
            times[hop].append(time.perf_counter() - t0)
            await asyncio.sleep(0.01)
    return times


async def _pause_round_trips(
    bench: Bench, count: int, timeout: float = 2.0, give_up: int = 3
) -> PauseRun:
    """Seconds from sending ``job.pause`` on the socket to receiving ``job.paused`` there,
    resumed between two pauses. A socket the gateway closes is opened again; a round trip
    it broke, or whose ``job.paused`` never came, counts as lost (infinite); after
    ``give_up`` of those the run stops."""
    [job] = await submit_started(bench, bodies.idle, 1, period=0.001)
    channel = f"job:{job.job_id}"
    run = PauseRun([])

    def reply_to(request_id: str) -> Any:
        return lambda f: f["type"] in ("ack", "error") and f["data"].get("request_id") == request_id

    async def connect() -> Client:
        client = await Client.open(bench.ws_url, bench.token)
        await client.subscribe(channel)
        return client

    client = await connect()
    try:
        for k in range(count):
            if client.close_code is not None:
                run.reconnects += 1
                await client.close()
                client = await connect()
            try:
                start = len(client.frames)
                t0, sent = time.perf_counter(), time.time()
                await client.send({"type": "job.pause", "job_id": job.job_id, "id": f"p{k}"})
                paused = await client.wait_type(
                    "job.paused", job.job_id, timeout=timeout, start=start
                )
                run.times.append(time.perf_counter() - t0)
                made = _made_at(paused)
                run.legs.append((made - sent, time.time() - made))
                await client.wait_for(reply_to(f"p{k}"), 30, start)
                start = len(client.frames)
                await client.send({"type": "job.resume", "job_id": job.job_id, "id": f"r{k}"})
                await client.wait_for(reply_to(f"r{k}"), 30, start)
                await client.wait_type("job.resumed", job.job_id, timeout=timeout, start=start)
            except (TimeoutError, ConnectionError):
                if len(run.times) == k:
                    run.lost += 1
                    run.times.append(math.inf)
                await asyncio.to_thread(job.resume)  # whatever state the break left it in
                if run.lost >= give_up:
                    break
        run.hops = await _hop_times(job, min(HOP_CALLS, max(count, 5)))
    finally:
        await client.close()
        await cancel_all([job])
    return run


def _stop_ray_job(client: Any, job_id: str) -> float:
    t0 = time.perf_counter()
    client.stop_job(job_id)
    while not str(client.get_job_status(job_id)).endswith("STOPPED"):
        time.sleep(FAST_POLL)
    return time.perf_counter() - t0


async def _ray_job_stops(bench: Bench, count: int) -> list[float]:
    """Seconds from ``stop_job`` to the status STOPPED, for Ray Jobs that sleep."""
    client = bench.jobs_client()
    entrypoint = _python("import time; time.sleep(600)")
    ids = [await _submit_ray_job(client, entrypoint) for _ in range(count)]
    times = []
    try:
        await _ray_jobs_running(client, ids)
        for job_id in ids:
            times.append(await asyncio.to_thread(_stop_ray_job, client, job_id))
    finally:
        for job_id in ids:
            with contextlib.suppress(Exception):
                await _call(client.stop_job, job_id)
    return times


async def pause(bench: Bench, sizes: ControlSizes, load_rate: float | None) -> list[Row]:
    idle = await _pause_round_trips(bench, sizes.pauses)
    rate = load_rate or 50_000.0
    async with paced_load(bench, rate, seconds=600):
        loaded = await _pause_round_trips(bench, sizes.pauses)
    stops = await _ray_job_stops(bench, sizes.ray_job_stops)
    note(f"Ray Jobs stop → STOPPED: {', '.join(f'{ms(s):.0f}' for s in stops)} ms")
    base = f"Ray Jobs stop_job → status STOPPED (idle, p50 of {len(stops)})"
    rows: list[Row] = []
    for label, run in (("idle", idle), (f"under a {rate:,.0f} events/s load", loaded)):
        if run.lost or run.reconnects:
            note(
                f"{label}: {run.lost} of {len(run.times)} round trips lost; the gateway "
                f"closed the socket {run.reconnects} times"
            )
        if run.lost:
            label += f", {run.lost} of {len(run.times)} LOST"
        rows += latency_rows(
            lambda p, label=label: f"pause: round trip p{p}, socket command → job.paused, {label}",
            run.times,
            base,
            stops,
            baseline_p=50,
        )
    legs = (
        ("socket command → job.paused made at the body's checkpoint", 0),
        ("job.paused made → on the socket", 1),
    )
    for leg, i in legs:
        rows.append(
            Row(
                f"pause breakdown: {leg}, p50 under the load",
                ms(percentile([pair[i] for pair in loaded.legs], 50)),
                "ms",
                "the same leg idle",
                ms(percentile([pair[i] for pair in idle.legs], 50)),
                higher_is_better=False,
            )
        )
    for hop, times in loaded.hops.items():
        rows.append(
            Row(
                f"pause breakdown: one call to the {hop}, p50 under the load",
                ms(percentile(times, 50)),
                "ms",
                "the same call idle",
                ms(percentile(idle.hops.get(hop, []), 50)),
                higher_is_better=False,
            )
        )
    return rows


# --- push vs poll ---------------------------------------------------------------------------


async def _pushed(bench: Bench, count: int) -> list[float]:
    """Seconds from a job's completion to its ``job.completed`` on a watching socket."""
    client = await Client.open(bench.ws_url, bench.token)
    try:
        await client.subscribe("jobs")
        handles = [
            await asyncio.to_thread(
                control_plane.submit, bodies.finish_after, seconds=random.uniform(1.0, 2.0)
            )
            for _ in range(count)
        ]
        delays = []
        for handle in handles:
            frame = await client.wait_type("job.completed", handle.job_id, timeout=60)
            delays.append(frame[RECEIVED] - frame["data"]["result"]["done_at"])
        return delays
    finally:
        await client.close()


def _watch_ray_job(client: Any, job_id: str) -> float:
    """Poll as Ray's docs do (status, sleep 1 s) until SUCCEEDED; the delay after the end."""
    while True:
        status = str(client.get_job_status(job_id))
        if status.endswith("SUCCEEDED"):
            seen = time.time()
            break
        if status.endswith(("FAILED", "STOPPED")):
            raise RuntimeError(f"Ray Job {job_id} ended {status}")
        time.sleep(RAY_JOBS_POLL)
    logs = client.get_job_logs(job_id)
    done_at = float(logs.split("done_at")[-1].split()[0])
    return seen - done_at


async def _polled(bench: Bench, count: int) -> list[float]:
    client = bench.jobs_client()
    code = (
        "import random, time; time.sleep(random.uniform(2.0, 3.0)); "
        "print('done_at', time.time(), flush=True)"
    )
    ids = [await _submit_ray_job(client, _python(code)) for _ in range(count)]
    with ThreadPoolExecutor(count) as pool:
        loop = asyncio.get_running_loop()
        return list(
            await asyncio.gather(
                *(loop.run_in_executor(pool, _watch_ray_job, client, i) for i in ids)
            )
        )


async def push_vs_poll(bench: Bench, sizes: ControlSizes) -> list[Row]:
    pushed = await _pushed(bench, sizes.watchers)
    polled = await _polled(bench, sizes.watchers)
    base = f"Ray Jobs get_job_status polled every {RAY_JOBS_POLL:.0f} s, as its docs do"
    return latency_rows(
        lambda p: (
            f"push vs poll: state change → watcher p{p}, ours pushed (job.completed), "
            f"{len(pushed)} jobs"
        ),
        pushed,
        base,
        polled,
    )


# --- submit ---------------------------------------------------------------------------------


async def _pool_stats() -> dict[str, Any]:
    stats: dict[str, Any] = await runtime.controller().pool_stats.remote()
    return stats


async def _pool_full() -> None:
    """Wait until every worker the warm pool wants is started and idle."""

    async def full() -> bool:
        stats = await _pool_stats()
        return bool(stats["idle"] >= stats["target"] and not stats["starting"])

    deadline = time.monotonic() + 120
    while not await full():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the warm pool did not fill: {await _pool_stats()}")
        await asyncio.sleep(0.02)


async def _submit_latencies(bench: Bench, count: int, warm: bool) -> list[float]:
    """Seconds from submit to ``job.started`` on a socket, one job after the other; ``warm``:
    each once the pool has refilled (a warm start each), else each with the pool off."""
    client = await Client.open(bench.ws_url, bench.token)
    times = []
    try:
        await client.subscribe("jobs")
        for _ in range(count):
            if warm:
                await _pool_full()
            t0 = time.time()
            handle = await asyncio.to_thread(control_plane.submit, bodies.finish_after, seconds=0)
            frame = await client.wait_type("job.started", handle.job_id, timeout=60)
            times.append(frame[RECEIVED] - t0)
            await client.wait_type("job.completed", handle.job_id, timeout=60)
    finally:
        await client.close()
    return times


async def _bare_latencies(count: int) -> list[float]:
    times = []
    for _ in range(count):
        t0 = time.time()
        actor = bodies.BareActor.remote()
        await actor.ready.remote()
        times.append(time.time() - t0)
        ray.kill(actor)
    return times


async def _capacity(bench: Bench, cap: int) -> tuple[int, float, float]:
    """Start ``cap`` idle jobs at once: (how many ran together, jobs/s, mean USS per actor)."""
    client = await Client.open(bench.ws_url, bench.token)
    handles: list[control_plane.JobHandle] = []
    try:
        await client.subscribe("jobs")
        t0 = time.time()
        for _ in range(cap):
            handles.append(await asyncio.to_thread(control_plane.submit, bodies.idle))
        ids = {h.job_id for h in handles}

        def started() -> set[str]:
            return {
                f["data"]["job_id"]
                for f in client.frames
                if f["type"] == "job.started" and f["data"]["job_id"] in ids
            }

        def ended() -> list[str]:
            return [
                f["data"]["job_id"]
                for f in client.frames
                if f["type"] in ("job.failed", "job.cancelled") and f["data"]["job_id"] in ids
            ]

        with contextlib.suppress(TimeoutError):
            await wait_until(
                lambda: len(started()) == cap or bool(ended()), 30 + 2 * cap, "idle jobs"
            )
        last = max((f[RECEIVED] for f in client.frames if f["type"] == "job.started"), default=t0)
        running = len(await asyncio.to_thread(control_plane.list_jobs, ["running"]))
        note(f"{len(started())} of {cap} idle jobs started, {len(ended())} ended; {running} run")
        mems = [uss(p) for p in processes("ray::JobActor")]
        rate = len(started()) / (last - t0) if last > t0 else float("nan")
        return running, rate, sum(mems) / len(mems) if mems else float("nan")
    finally:
        await cancel_all(handles)
        await client.close()


async def _bare_capacity(cap: int) -> tuple[int, float, float]:
    t0 = time.time()
    actors = [bodies.BareActor.remote() for _ in range(cap)]
    try:
        pids = await asyncio.wait_for(
            asyncio.gather(*(a.ready.remote() for a in actors)), 30 + 2 * cap
        )
        rate = cap / (time.time() - t0)
        mems = [uss(p) for p in processes("ray::Bare")]
        return len(set(pids)), rate, sum(mems) / len(mems) if mems else float("nan")
    finally:
        for actor in actors:
            ray.kill(actor)


async def _cold_latencies(bench: Bench, count: int) -> list[float]:
    """As :func:`_submit_latencies` with the warm pool turned off meanwhile."""
    controller = runtime.controller()
    size = (await _pool_stats())["size"]
    await controller.set_pool_size.remote(0)
    try:
        return await _submit_latencies(bench, count, warm=False)
    finally:
        await controller.set_pool_size.remote(size)


async def submit(bench: Bench, sizes: ControlSizes) -> list[Row]:
    if (await _pool_stats())["size"] < 1:
        raise RuntimeError("the warm pool is off: the warm rows need pool_size >= 1")
    warm = await _submit_latencies(bench, sizes.submits, warm=True)
    cold = await _cold_latencies(bench, sizes.submits)
    await _pool_full()
    bare = await _bare_latencies(sizes.submits)
    base = "a bare Ray actor: .remote() → first method call returns"
    rows: list[Row] = []
    for label, ours in (
        (f"warm pool, {len(warm)} in a row", warm),
        (f"cold, no pool, {len(cold)} in a row", cold),
    ):
        rows += latency_rows(
            lambda p, label=label: f"submit: submit → job.started on the socket p{p} ({label})",
            ours,
            base,
            bare,
        )
    cap = sizes.capacity
    running, rate, mem = await _capacity(bench, cap)
    b_running, b_rate, b_mem = await _bare_capacity(cap)
    base = f"bare Ray actors, {cap} created at once"
    rows += [
        Row(f"submit: jobs/s, {cap} idle jobs submitted at once", rate, "jobs/s", base, b_rate),
        Row(f"submit: idle jobs running at once (cap {cap})", running, "jobs", base, b_running),
        Row(
            "submit: memory per idle job actor (USS)",
            mem / 2**20,
            "MB",
            base,
            b_mem / 2**20,
            higher_is_better=False,
        ),
    ]
    return rows
