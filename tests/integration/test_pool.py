"""The warm pool on a real Ray: submits start in job actors that ran before them, each runs
one job and goes, jobs that need another worker go cold, and the pool refills."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest
import ray
from ray.exceptions import RayActorError

import control_plane
from control_plane.actors import runtime
from control_plane.actors.worker_pool import named_job_actors
from control_plane.core.errors import JobCancelledError, JobFailedError
from tests.conftest import TOKEN
from tests.integration.wsclient import TestSocket

pytestmark = pytest.mark.ray


async def _stats() -> dict[str, Any]:
    stats: dict[str, Any] = await runtime.controller().pool_stats.remote()
    return stats


async def _full_pool(timeout: float = 120.0) -> dict[str, Any]:
    """The pool's stats once every worker it wants is idle."""
    async with asyncio.timeout(timeout):
        while True:
            stats = await _stats()
            if stats["size"] > 0 and stats["idle"] >= stats["target"] and not stats["starting"]:
                return stats
            await asyncio.sleep(0.05)


async def _gone(actor: Any, timeout: float = 30.0) -> bool:
    async with asyncio.timeout(timeout):
        while True:
            try:
                await actor.ready.remote()
            except RayActorError:
                return True
            await asyncio.sleep(0.1)


async def _warm_submit(target: str, **kwargs: Any) -> control_plane.JobHandle:
    """Submit once the pool is full, and check the job went to one of its workers."""
    before = await _full_pool()
    job = await asyncio.to_thread(control_plane.submit, target, **kwargs)
    assert job.job_id in before["idle_ids"], "the job did not take a warm worker"
    assert (await _stats())["hits"] == before["hits"] + 1
    return job


async def test_a_submit_runs_in_a_worker_started_before_it(plane: Any) -> None:
    stats = await _full_pool()
    assert stats["size"] >= 1
    worker = runtime.get_actor(runtime.job_actor_name(stats["idle_ids"][0]))
    assert worker is not None and await worker.ready.remote() is True  # idle, holds no job
    sock = await TestSocket.open(plane.ws_url, TOKEN)
    await sock.subscribe("jobs")
    job = await _warm_submit("jobs.examples:countdown", steps=3, delay=0.01)
    await sock.wait_type("job.completed", job.job_id)
    assert [e["type"] for e in sock.events(job.job_id)] == [
        "job.created",
        "job.started",
        "job.completed",
    ]
    assert ray.get(job.result, timeout=30) == {"steps": 3}
    # every lookup by name or id finds the pooled actor as it finds a cold one
    assert control_plane.get_job(job.job_id).status().state == "completed"
    assert await _gone(job.actor)  # one job, then the worker goes
    await sock.close()


async def test_a_pooled_job_pauses_resumes_and_cancels(plane: Any) -> None:
    job = await _warm_submit("jobs.examples:countdown", steps=500, delay=0.02)
    found = runtime.get_actor(runtime.job_actor_name(job.job_id))
    assert found is not None and found._actor_id == job.actor._actor_id
    assert (await asyncio.to_thread(job.pause)).state == "paused"
    assert (await asyncio.to_thread(job.resume)).state == "running"
    assert (await asyncio.to_thread(job.cancel)).state == "cancelled"
    with pytest.raises(JobCancelledError):
        ray.get(job.result, timeout=30)
    assert await _gone(job.actor)


async def test_a_pooled_job_that_never_checkpoints_is_killed_and_its_worker_not_reused(
    plane: Any,
) -> None:
    job = await _warm_submit(
        "jobs.examples:spin", job_options={"cancel_grace": 0.5, "pause_timeout": 0.3}
    )
    sock = await TestSocket.open(plane.ws_url, TOKEN)
    await sock.subscribe(f"job:{job.job_id}", since=0)
    await sock.wait_type("job.started", job.job_id)
    status = await asyncio.to_thread(job.cancel)
    assert status.state == "cancelled" and status.forced
    with pytest.raises(JobCancelledError) as info:
        ray.get(job.result, timeout=30)
    assert info.value.forced
    assert await _gone(job.actor)
    await _no_later_job_runs_in(job)
    await sock.close()


async def test_a_worker_that_ran_a_failed_job_is_never_handed_another(plane: Any) -> None:
    job = await _warm_submit("jobs.examples:fail", after=1)
    with pytest.raises(JobFailedError):
        ray.get(job.result, timeout=30)
    assert await _gone(job.actor)
    await _no_later_job_runs_in(job)


async def _no_later_job_runs_in(ended: control_plane.JobHandle) -> None:
    """The pool refills with new workers, and the next jobs run in those."""
    stats = await _full_pool()
    assert ended.job_id not in stats["idle_ids"]
    later = [
        await asyncio.to_thread(control_plane.submit, "jobs.examples:countdown", steps=1)
        for _ in range(stats["idle"] + 1)
    ]
    for job in later:
        assert job.actor._actor_id != ended.actor._actor_id
        assert ray.get(job.result, timeout=60) == {"steps": 1}


async def test_a_running_job_actor_takes_no_second_job(plane: Any) -> None:
    job = await _warm_submit("jobs.examples:countdown", steps=500, delay=0.02)
    with pytest.raises(ray.exceptions.RayTaskError, match="takes no other"):
        await job.actor.adopt.remote(
            "other", "jobs.examples:countdown", (), {}, "x", "y", "z", None, None, None
        )
    assert (await asyncio.to_thread(job.status)).state in ("pending", "running")
    await asyncio.to_thread(job.cancel)


@pytest.mark.parametrize(
    "options",
    [
        {"runtime_env": {"env_vars": {"POOL_TEST_ENV": "cold"}}},
        {"resources": {runtime.HEAD_NODE_RESOURCE: 0.001}},
    ],
    ids=["runtime_env", "resources"],
)
async def test_a_job_with_its_own_resources_or_runtime_env_starts_cold(
    plane: Any, options: dict[str, Any]
) -> None:
    def env_value(ctx: Any, name: str) -> str | None:
        return os.environ.get(name)

    before = await _full_pool()
    job = await asyncio.to_thread(
        control_plane.submit, env_value, "POOL_TEST_ENV", job_options=options
    )
    after = await _stats()
    assert job.job_id not in before["idle_ids"]
    assert after["cold"] == before["cold"] + 1 and after["hits"] == before["hits"]
    expected = "cold" if "runtime_env" in options else None
    assert ray.get(job.result, timeout=120) == expected


async def test_the_pool_refills_with_new_workers_after_submits(plane: Any) -> None:
    before = await _full_pool()
    taken = [
        await asyncio.to_thread(control_plane.submit, "jobs.examples:countdown", steps=1)
        for _ in before["idle_ids"]
    ]
    assert {j.job_id for j in taken} == set(before["idle_ids"])
    after = await _full_pool()
    assert len(after["idle_ids"]) == len(before["idle_ids"])
    assert not set(after["idle_ids"]) & set(before["idle_ids"])
    for job in taken:
        ray.get(job.result, timeout=60)


async def test_the_pool_resizes_at_run_time(plane: Any) -> None:
    controller = runtime.controller()
    size = (await _full_pool())["size"]
    try:
        await controller.set_pool_size.remote(0)
        async with asyncio.timeout(60):
            while (await _stats())["idle"]:
                await asyncio.sleep(0.05)
        misses = (await _stats())["misses"]
        job = await asyncio.to_thread(control_plane.submit, "jobs.examples:countdown", steps=1)
        assert ray.get(job.result, timeout=60) == {"steps": 1}
        assert (await _stats())["misses"] == misses  # off: not even a miss
    finally:
        await controller.set_pool_size.remote(size)
    assert len((await _full_pool())["idle_ids"]) == size


async def test_a_restarted_controller_kills_the_idle_workers_it_did_not_hand_out(
    plane: Any,
) -> None:
    old = (await _full_pool())["idle_ids"]
    ray.kill(runtime.controller(), no_restart=False)  # Ray starts it again
    async with asyncio.timeout(120):
        while True:
            try:
                await asyncio.to_thread(control_plane.list_jobs)  # its first call: start()
                break
            except Exception:
                await asyncio.sleep(0.2)
        while set(old) & await asyncio.to_thread(named_job_actors):
            await asyncio.sleep(0.1)
    new = (await _full_pool())["idle_ids"]
    assert new and not set(new) & set(old)
    job = await _warm_submit("jobs.examples:countdown", steps=1)
    assert ray.get(job.result, timeout=60) == {"steps": 1}


async def test_a_worker_that_dies_idle_costs_a_job_nothing_and_is_replaced(plane: Any) -> None:
    """Killed while idle: a submit that comes at once may still take it (the pool has not
    heard yet) and runs cold instead, not as a restart; the pool replaces it either way."""
    idle = (await _full_pool())["idle_ids"]
    for worker_id in idle:
        ray.kill(runtime.get_actor(runtime.job_actor_name(worker_id)), no_restart=True)
    job = await asyncio.to_thread(control_plane.submit, "jobs.examples:countdown", steps=2)
    assert ray.get(job.result, timeout=120) == {"steps": 2}
    sock = await TestSocket.open(plane.ws_url, TOKEN)
    await sock.subscribe(f"job:{job.job_id}", since=0)
    await sock.wait_type("job.completed", job.job_id)
    assert [e["type"] for e in sock.events(job.job_id)] == [
        "job.created",
        "job.started",
        "job.progress",
        "job.progress",
        "job.completed",
    ]
    await sock.close()
    after = await _full_pool()
    assert not set(after["idle_ids"]) & set(idle)
    assert len(after["idle_ids"]) == len(idle)
