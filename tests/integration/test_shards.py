"""The hub's shards, on the wire: each event once, in order per channel, no gap, to a raw
client across reconnects that resume with a per-shard ``since`` (an integer with one shard),
and to the Python client. Real Ray, the real Serve gateway of the ``plane`` fixture: with
``CONTROL_PLANE_TEST_HUB_SHARDS=2`` its hub has two shards and the jobs land on both.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import control_plane
from control_plane.actors import hub_shards
from control_plane.client import ControlPlaneClient
from control_plane.core.shards import shard_of_job
from tests.conftest import TOKEN
from tests.integration.rawclient import RawClient, event_key
from tests.integration.test_wire_delivery import held_job, hub_log, seqs_of

pytestmark = pytest.mark.ray

STEPS = 150


def jobs_on_every_shard(shards: int) -> list[control_plane.JobHandle]:
    """Held jobs, at least one on each shard (job ids are random: submit until so)."""
    jobs: list[control_plane.JobHandle] = []
    while len(jobs) < 2 or {shard_of_job(j.job_id, shards) for j in jobs} != set(range(shards)):
        assert len(jobs) < 12, "twelve job ids on too few shards"
        jobs.append(held_job("jobs.examples:countdown", steps=STEPS, delay=0.01))
    return jobs


@pytest.mark.timeout(300)
async def test_jobs_on_every_shard_reach_a_raw_client_once_in_order_across_reconnects(
    plane: Any,
) -> None:
    shards = len(await asyncio.to_thread(hub_shards.handles))
    jobs = await asyncio.to_thread(jobs_on_every_shard, shards)
    channels = [f"job:{j.job_id}" for j in jobs]
    client = RawClient(plane.ws_url, TOKEN)
    await client.connect()
    welcome = await client.wait_for(lambda f: f["type"] == "welcome", 30)
    assert isinstance(welcome["data"]["seq"], int if shards == 1 else dict)
    await client.acked(await client.subscribe(channels, since=0))
    for job in jobs:
        await asyncio.to_thread(job.resume)
    resumes: list[int | dict[str, int]] = []
    async with asyncio.timeout(240):
        while not all(client.types[(c, "job.completed")] for c in channels):
            await asyncio.sleep(0.3)
            if len(resumes) < 4:  # drop the socket mid-stream, resume where it was
                client.drop()
                resumes.append(client.resume_since)
                await client.acked(await client.resume(channels))
    log = await hub_log(channels)
    audit = client.audit(seqs_of(log), channels)
    assert audit.ok, str(audit)
    assert audit.received == len(log) > len(jobs) * STEPS
    frames = client.events(channels)
    assert all(("shard" in f) == (shards > 1) for f in frames)
    if shards > 1:  # each resumed with a seq per shard, each job's events on its own shard
        assert any(isinstance(r, dict) for r in resumes)
        for job in jobs:
            placed = {f["shard"] for f in client.events([f"job:{job.job_id}"])}
            assert placed == {shard_of_job(job.job_id, shards)}
    await client.close()


@pytest.mark.timeout(300)
async def test_the_python_client_resumes_every_shard_after_drops(plane: Any) -> None:
    shards = len(await asyncio.to_thread(hub_shards.handles))
    jobs = await asyncio.to_thread(jobs_on_every_shard, shards)
    channels = [f"job:{j.job_id}" for j in jobs]
    seen: list[dict[str, Any]] = []
    async with ControlPlaneClient(plane.ws_url, TOKEN) as client:
        await client.subscribe(channels)
        for job in jobs:
            await asyncio.to_thread(job.resume)
        done: set[str] = set()
        drops = 0
        async with asyncio.timeout(240):
            async for event in client.events():
                if event.get("seq") is None or event.get("channel") not in channels:
                    continue
                seen.append(event)
                if event["type"] == "job.completed":
                    done.add(event["channel"])
                    if done == set(channels):
                        break
                if event["type"] == "job.progress" and len(seen) % 40 == 0 and drops < 4:
                    drops += 1
                    client._drop_connection_for_tests()
        assert drops == 4 and client.gaps == 0
        if shards > 1:
            assert all(isinstance(c, dict) for c in client.cursors.values())
    keys = [event_key(e) for e in seen]
    assert len(keys) == len(set(keys))  # no duplicate
    for channel in channels:  # per channel: the log's tail since the subscribe, in order
        got = [event_key(e) for e in seen if e["channel"] == channel]
        assert got == seqs_of(await hub_log([channel]))[-len(got) :]
