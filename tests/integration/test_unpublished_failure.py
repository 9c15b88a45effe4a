"""A job whose ``job.failed`` never reaches the hub (its event log refuses writes) is still
recorded failed by the controller, from the outcome the job actor hands over."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import control_plane
from control_plane.actors import runtime
from control_plane.core.errors import JobFailedError
from jobs.context import JobContext

pytestmark = pytest.mark.ray


async def chatter(ctx: JobContext, limit: int = 1_000_000) -> int:
    """Progress events until publishing fails."""
    for i in range(limit):
        if i % 100 == 0:
            await ctx.checkpoint()
            await asyncio.sleep(0)
        ctx.progress(100 * i / limit, message=f"event {i}")
    return limit


async def test_a_failure_the_hub_refused_is_recorded_from_the_handed_over_outcome(
    plane: Any,
) -> None:
    hub = runtime.hub()
    job = control_plane.submit(chatter, job_options={"pause_timeout": 30})
    assert job.pause().state == "paused"
    await hub.constrain_log.remote("read-only")
    try:
        job.resume()
        with pytest.raises(JobFailedError) as failed:
            await asyncio.wait_for(asyncio.wrap_future(job.result.future()), 120)
    finally:
        await hub.constrain_log.remote("writable")
    assert "could not be published" in failed.value.error, failed.value.error
    # The hub took no job.failed: the registry has it from the job actor's hand-over.
    status = job.status()
    assert status.state == "failed", status
    assert status.error == failed.value.error
    listed = {s.job_id: s for s in control_plane.list_jobs()}
    assert listed[job.job_id].state == "failed"
