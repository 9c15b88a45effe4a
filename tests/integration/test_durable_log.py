"""The hub's durable log on the real plane: its process killed while jobs emit loses and
repeats nothing, on the log and on the wire, in the same epoch; a log that cannot be
written fails the job that publishes to it, and nothing it was told of is missing from
the file.

The log is made unwritable for real: ``constrain_log("full")`` caps the SQLite file at its
size (``PRAGMA max_page_count``, after giving its free pages back), so SQLite fails with
SQLITE_FULL exactly as on a full disk; ``"read-only"`` opens the file again read-only
(SQLITE_READONLY), as on a read-only mount. As root a ``chmod`` would not stop a write.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from collections import Counter
from typing import Any

import pytest

import control_plane
from control_plane.actors import runtime
from control_plane.core.errors import EventLogError, JobFailedError
from control_plane.core.sqlite_store import SQLiteEventStore
from tests.conftest import TOKEN
from tests.integration.rawclient import RawClient

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]
logger = logging.getLogger(__name__)

JOBS = 4
EVENTS = 10_000
KILLS = 3
RATE = 2_500.0  # events/s per job: the kills land while all four emit


def progress_index(frame: dict[str, Any]) -> int:
    """Which of its job's EVENTS progress events this is (emit_burst reports (i+1)/count)."""
    return round(frame["data"]["progress"] * EVENTS / 100) - 1


def per_job(frames: list[dict[str, Any]], job_ids: list[str]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {j: [] for j in job_ids}
    for f in frames:
        if f["type"] == "job.progress" and f["data"]["job_id"] in out:
            out[f["data"]["job_id"]].append(progress_index(f))
    return out


async def hub_pid(hub: Any, timeout: float = 120.0) -> int:
    """The hub's pid, once it answers (a restarted hub answers after its restore)."""
    async with asyncio.timeout(timeout):
        pid: int = await hub.pid.remote()
        return pid


async def test_four_jobs_lose_and_repeat_nothing_while_the_hub_is_killed_three_times(
    plane: Any,
) -> None:
    hub = runtime.hub()
    epoch, head = await hub.head.remote()
    pids = [await hub_pid(hub)]
    jobs = [
        control_plane.submit("jobs.examples:emit_burst", count=EVENTS, every=100, rate=RATE)
        for _ in range(JOBS)
    ]
    # They wait paused while the client subscribes: a subscribe's replay drained while
    # 10,000 events/s pile up behind it is not what this test is about.
    assert all(j.pause().state == "paused" for j in jobs)
    ids = [j.job_id for j in jobs]
    channels = [f"job:{i}" for i in ids]
    client = RawClient(plane.ws_url, TOKEN, max_queue=1024)
    await client.connect()
    await client.acked(await client.subscribe(channels, since=head))
    assert all(j.resume().state == "running" for j in jobs)

    def progress_read() -> int:
        return sum(client.types[(c, "job.progress")] for c in channels)

    for kill in range(1, KILLS + 1):
        # Kill when a share of the events went through, while all four jobs still emit.
        await client.wait_until(lambda k=kill: progress_read() >= k * JOBS * EVENTS // 5, 120)
        os.kill(pids[-1], signal.SIGKILL)
        if kill == 2:  # the client goes too, and resumes from its last seq meanwhile
            await client.resume(channels)
        pids.append(await hub_pid(hub))
    assert len(set(pids)) == KILLS + 1, pids

    results = await asyncio.gather(
        *(asyncio.wait_for(asyncio.wrap_future(j.result.future()), 180) for j in jobs)
    )
    assert results == [EVENTS] * JOBS
    now_epoch, _ = await hub.head.remote()
    assert now_epoch == epoch  # nothing was lost: the same life of the log

    # The log: every job's events exactly once, in the job's order.
    reply = await hub.replay.remote(head, channels, epoch)
    assert reply["recovered"] and reply["epoch"] == epoch
    entries = [e for e in reply["entries"] if e.channel in channels]  # not broadcasts
    logged = [json.loads(e.frame) for e in entries]
    in_log = per_job(logged, ids)
    for job_id in ids:
        assert in_log[job_id] == list(range(EVENTS)), (
            f"job {job_id}: lost, repeated or out of order"
        )
        kinds = Counter(f["type"] for f in logged if f["data"].get("job_id") == job_id)
        assert kinds["job.started"] == 1 and kinds["job.completed"] == 1, kinds

    # The wire: the raw client read each of those events once, in order, across its sockets.
    expected = [e.seq for e in entries]
    await client.wait_until(lambda: client.last_seq >= expected[-1], 120)
    audit = client.audit(expected, channels, after=head)
    assert audit.ok, client.describe()
    assert per_job(client.events(channels), ids) == in_log
    assert all(c.code != 1012 for c in client.closes), client.closes  # no restart was lost
    assert client.connections == 2  # its own drop only: the hub's restarts closed nothing
    acks = [r.frame for r in client.received if r.frame.get("type") in ("welcome", "ack")]
    assert {f["data"]["epoch"] for f in acks if "epoch" in f["data"]} == {epoch}
    assert all(f["data"]["recovered"] for f in acks if "recovered" in f["data"])
    logger.info(
        "hub pids %s; on the wire: %d events on the jobs' channels over %d connections "
        "(%s), %d duplicates, %d gaps; epoch %s throughout",
        pids,
        audit.received,
        client.connections,
        [(c.code, c.by_server) for c in client.closes],
        len(audit.duplicates),
        len(audit.gaps),
        epoch,
    )
    await client.close()


async def flood(ctx: Any, limit: int = 300_000) -> int:
    """Progress events with text that does not compress, until publishing fails."""
    for i in range(limit):
        if i % 100 == 0:
            await ctx.checkpoint()
        ctx.progress(100 * i / limit, message=os.urandom(48).hex())
    return limit


@pytest.mark.parametrize("how", ["full", "read-only"])
async def test_a_log_that_cannot_be_written_fails_the_job_and_acknowledges_nothing_unwritten(
    plane: Any, how: str
) -> None:
    hub = runtime.hub()
    epoch, _ = await hub.head.remote()
    path = (await hub.log_stats.remote())["path"]
    job = control_plane.submit(flood, job_options={"pause_timeout": 30})
    assert job.pause().state == "paused"  # started: its actor and emitter are up
    await hub.constrain_log.remote(how)
    try:
        try:
            job.resume()
        except EventLogError as refused:
            # Events the job made before its pause were still in flight when the log was
            # constrained: its emitter failed on them, and the resume's own job.resumed is
            # refused with the log's reason. The job goes on from its checkpoint, and fails
            # at its next event, as below.
            assert "event log" in str(refused), refused
        with pytest.raises(JobFailedError) as failed:
            await asyncio.wait_for(asyncio.wrap_future(job.result.future()), 120)
        after_epoch, head = await hub.head.remote()
    finally:
        await hub.constrain_log.remote("writable")
    reason = failed.value.error
    assert "could not be published" in reason and "event log" in reason, reason
    assert ("full" if how == "full" else "readonly") in reason, reason
    assert after_epoch == epoch

    # What the hub appended (readers saw it, publishers were told) is all in the file, and
    # the file holds nothing the hub did not append.
    channel = f"job:{job.job_id}"
    reply = await hub.replay.remote(0, [channel], epoch)
    in_log = [(e.seq, e.frame) for e in reply["entries"] if e.channel == channel]
    on_disk = await asyncio.to_thread(_written, path, channel)
    assert in_log and in_log == [(s, f) for s, f in on_disk if s >= in_log[0][0]]
    assert max(s for s, _ in on_disk) <= head

    # Writable again: the next job's events go in as before.
    done = control_plane.submit("jobs.examples:countdown", steps=5, delay=0.01)
    assert await asyncio.wait_for(asyncio.wrap_future(done.result.future()), 60) == {"steps": 5}


def _written(path: str, channel: str) -> list[tuple[int, str]]:
    """(seq, frame) of what the file holds on ``channel``, read with a connection of its own."""
    store = SQLiteEventStore(path, read_only=True)
    try:
        restored = store.load()
    finally:
        store.close()
    out = []
    for batch in restored.batches:
        for k, (_, event_channel, head, tail) in enumerate(batch.events):
            if event_channel == channel:
                seq = batch.first_seq + k
                out.append((seq, f'{head},"seq":{seq}{tail}'))
    return out
