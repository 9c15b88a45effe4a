"""A hub restart with a full durable log: how long until it answers again.

    python benchmarks/recovery.py [--events 1000000]

A hub actor of its own (not the control plane's), with ``--events`` as its capacity and its
log in a temporary state directory, is filled with that many job.progress events (from 4
jobs, 300 a batch, as jobs send them), then its process is SIGKILLed; the figure is the time
from the kill until ``head`` answers on the restarted actor, with the whole history restored
(epoch and head checked). The baseline is the same kill of a hub whose log is empty: what
Ray's restart of the process costs by itself. It also prints the log's bytes per event and
the restore alone (a ``LogWriter`` over the file, in this process).

``benchmarks/run.py`` runs it as its ``recovery`` scenario (50,000 events with --quick).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(ROOT))

import ray  # noqa: E402

from benchmarks.harness import Row, note  # noqa: E402
from control_plane.actors.hub import EventHubActor  # noqa: E402
from control_plane.actors.state_dir import EVENTS_FILE  # noqa: E402
from control_plane.core.encoding import Encoded, ProgressEncoder  # noqa: E402
from control_plane.core.log_writer import LogWriter  # noqa: E402
from control_plane.core.sqlite_store import SQLiteEventStore  # noqa: E402

JOBS = 4
BATCH = 300  # what a job's hub call carries (jobs/actor.py PUBLISH_BATCH)
IN_FLIGHT = 8


def batches(total: int) -> list[tuple[str, list[Encoded]]]:
    """(publisher, batch) in the order jobs would send them: progress with real-looking
    timestamps and values, round robin over the jobs."""
    encoders = [ProgressEncoder(f"{k:04x}recovery") for k in range(JOBS)]
    start = datetime(2026, 1, 1, tzinfo=UTC)
    out: list[tuple[str, list[Encoded]]] = []
    per_job = total // JOBS
    for first in range(0, per_job, BATCH):
        for k, encoder in enumerate(encoders):
            events = []
            for i in range(first, min(per_job, first + BATCH)):
                at = start + timedelta(microseconds=37 * (i * JOBS + k))
                stamp = at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
                events.append(encoder.encode(stamp, "running", 100 * (i + 1) / per_job, None))
            out.append((f"job-{k}", events))
    return out


def hub_options() -> dict[str, Any]:
    return {"num_cpus": 0, "max_restarts": -1, "max_task_retries": -1, "max_concurrency": 1000}


async def fill(hub: Any, total: int) -> None:
    numbers = dict.fromkeys((f"job-{k}" for k in range(JOBS)), 0)
    in_flight: list[Any] = []
    for publisher, events in batches(total):
        in_flight.append(hub.publish_encoded.remote(events, "", publisher, numbers[publisher]))
        numbers[publisher] += 1
        if len(in_flight) >= IN_FLIGHT:
            await in_flight.pop(0)
    await asyncio.gather(*in_flight)


async def restart_time(hub: Any) -> tuple[float, tuple[str, int]]:
    """SIGKILL the hub's process; seconds until it answers ``head`` again, and the head."""
    pid = await hub.pid.remote()
    before = await hub.head.remote()
    started = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    head: tuple[str, int] = await hub.head.remote()
    took = time.monotonic() - started
    if await hub.pid.remote() == pid:
        raise RuntimeError("the hub's process did not restart")
    if head != before:
        raise RuntimeError(f"the restarted hub is at {head}, it was at {before}")
    return took, head


async def recovery(total: int = 1_000_000) -> list[Row]:
    root = Path(tempfile.mkdtemp(prefix="cp-recovery-"))
    hubs: list[Any] = []
    try:
        empty = EventHubActor.options(**hub_options()).remote(total, str(root / "empty"))
        full = EventHubActor.options(**hub_options()).remote(total, str(root / "full"))
        hubs += [empty, full]
        t0 = time.monotonic()
        await fill(full, total)
        note(f"filled with {total} events in {time.monotonic() - t0:.1f} s")
        await empty.publish_encoded.remote(batches(JOBS)[0][1])
        baseline, _ = await restart_time(empty)
        took, (_, head) = await restart_time(full)
        stats = await full.log_stats.remote()
        note(
            f"log: {stats['bytes'] / 2**20:.1f} MB, {stats['bytes'] / head:.1f} bytes/event, "
            f"{stats['batches']} batches; restart {took:.2f} s, an empty hub's {baseline:.2f} s"
        )
        path = root / "full" / EVENTS_FILE
        t0 = time.monotonic()
        writer = LogWriter(total, SQLiteEventStore(path))
        restore = time.monotonic() - t0
        note(f"restore alone (LogWriter over the file, this process): {restore:.2f} s")
        if writer.log.head != head or len(writer.log) != total:
            raise RuntimeError(f"restored {len(writer.log)} events up to {writer.log.head}")
        writer.store.close()
    finally:
        for hub in hubs:
            ray.kill(hub, no_restart=True)
        shutil.rmtree(root, ignore_errors=True)
    return [
        Row(
            f"recovery: a hub restart with {total:,} events in its log, kill to answering",
            took,
            "s",
            "the same kill and restart of a hub with an empty log",
            baseline,
            higher_is_better=False,
        )
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        rows = asyncio.run(recovery(args.events))
    finally:
        ray.shutdown()
    for row in rows:
        print(
            f"{row.name}: {row.value:.2f} {row.unit} (baseline {row.baseline_value:.2f} {row.unit})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
