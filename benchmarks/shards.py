"""Ingest into a sharded hub: the same publishers into 1 hub shard and into 2, in one run.

The hub's shards here are made for the scenario (``ShardHub`` actors, each with its SQLite
log in a temporary directory), beside the plane's own hub, so that both counts are measured
on one machine in one run whatever ``--hub-shards`` the plane runs with. ``LOAD_JOBS``
publisher actors send what a job's emitter sends when its job emits flat out: batches of
``INGEST_BATCH`` encoded ``job.progress`` events, ``IN_FLIGHT`` numbered batches in flight,
each publisher on the shard of its job's channel (two jobs per shard with two shards). The
hub's CPU time per event (its processes' user + system time over the events appended) is
the figure the README's model of a larger machine starts from.
"""

from __future__ import annotations

import asyncio
import itertools
import shutil
import tempfile
import time
from collections import deque
from typing import Any

import psutil
import ray

from benchmarks.events import IN_FLIGHT, INGEST_BATCH, LOAD_JOBS, _rate
from benchmarks.harness import Row, note
from control_plane.actors.hub_shards import ShardHubActor
from control_plane.core.encoding import ProgressEncoder
from control_plane.core.hub_log import TARGET_CHANNEL
from control_plane.core.shards import shard_of_job

QUICK_EVENTS = 30_000  # per publisher
FULL_EVENTS = 250_000


class ShardPublisher:
    """One job's publishes, flat out: the same encoded batch again and again, numbered."""

    def run(self, hub: Any, job_id: str, count: int, batch_size: int, in_flight: int) -> int:
        encoder = ProgressEncoder(job_id)
        stamp = "2026-01-01T00:00:00.000Z"
        batch = [encoder.encode(stamp, "running", float(i % 100), None) for i in range(batch_size)]
        publisher = f"bench-{job_id}"
        refs: deque[Any] = deque()
        sent = 0
        for number in itertools.count():
            if sent >= count:
                break
            if len(refs) >= in_flight:
                ray.get(refs.popleft())
            refs.append(hub.publish_encoded.remote(batch, TARGET_CHANNEL, publisher, number))
            sent += batch_size
        ray.get(list(refs))
        return sent


ShardPublisherActor: Any = ray.remote(num_cpus=0)(ShardPublisher)


def job_ids(shards: int) -> list[str]:
    """``LOAD_JOBS`` job ids spread evenly over ``shards`` (as many jobs on each)."""
    per = LOAD_JOBS // shards
    found: dict[int, list[str]] = {k: [] for k in range(shards)}
    for i in itertools.count():
        job_id = f"bench{i:07x}"
        placed = found[shard_of_job(job_id, shards)]
        if len(placed) < per:
            placed.append(job_id)
        if all(len(v) == per for v in found.values()):
            return [j for k in range(shards) for j in found[k]]
    raise AssertionError("unreachable")


async def _ingest(shards: int, count: int) -> tuple[float, float]:
    """(events/s into ``shards`` hub shards from the publishers, hub CPU µs per event)."""
    state = tempfile.mkdtemp(prefix=f"cp-bench-shards{shards}-")
    options = {"num_cpus": 0, "max_concurrency": 10_000}
    hubs = [
        ShardHubActor.options(**options).remote(k, shards, state_dir=state) for k in range(shards)
    ]
    publishers = [ShardPublisherActor.remote() for _ in range(LOAD_JOBS)]
    try:
        pids = await asyncio.gather(*(h.pid.remote() for h in hubs))
        await asyncio.gather(*(p.__ray_ready__.remote() for p in publishers))
        procs = [psutil.Process(pid) for pid in pids]

        async def appended() -> int:
            heads = await asyncio.gather(*(h.head.remote() for h in hubs))
            return sum(head for _, head in heads)

        cpu_before = sum(sum(p.cpu_times()[:2]) for p in procs)
        started = time.monotonic()
        runs = [
            p.run.remote(hubs[shard_of_job(job_id, shards)], job_id, count, INGEST_BATCH, IN_FLIGHT)
            for p, job_id in zip(publishers, job_ids(shards), strict=True)
        ]
        rate = await _rate(appended, 0, LOAD_JOBS * count, timeout=180)
        await asyncio.gather(*runs)
        total = await appended()
        cpu = sum(sum(p.cpu_times()[:2]) for p in procs) - cpu_before
        note(
            f"{shards} shard(s): {total} events in {time.monotonic() - started:.1f} s, "
            f"{rate:,.0f} events/s; hub CPU {cpu:.1f} s ({1e6 * cpu / total:.1f} µs/event, "
            f"{cpu / (time.monotonic() - started) / shards:.0%} of a core per shard)"
        )
        return rate, 1e6 * cpu / total
    finally:
        for actor in [*publishers, *hubs]:
            ray.kill(actor)
        shutil.rmtree(state, ignore_errors=True)


async def sharded_ingest(quick: bool) -> list[Row]:
    count = QUICK_EVENTS if quick else FULL_EVENTS
    one, cost_one = await _ingest(1, count)
    two, cost_two = await _ingest(2, count)
    return [
        Row(
            f"ingest with 2 hub shards: events/s from {LOAD_JOBS} job publishers (SQLite log)",
            two,
            "events/s",
            "the same publishers into 1 hub shard, same run",
            one,
        ),
        Row(
            "hub CPU per event appended (1 shard: encode checks, append, SQLite write)",
            cost_one,
            "µs/event",
            "the same with 2 shards (summed over both)",
            cost_two,
            higher_is_better=False,
        ),
    ]
