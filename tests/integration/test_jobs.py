"""Jobs end to end on a real Ray with a real Serve gateway and real WebSocket clients."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import textwrap
import time
from typing import Any

import pytest
import ray
from ray.exceptions import RayActorError

import control_plane
from control_plane.core.errors import InvalidTransitionError, JobCancelledError, JobFailedError
from control_plane.job_control import JobController
from tests.conftest import TOKEN
from tests.integration.wsclient import TestSocket

pytestmark = pytest.mark.ray

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


async def _socket(plane: Any) -> TestSocket:
    return await TestSocket.open(plane.ws_url, TOKEN)


async def _actor_gone(actor: Any, timeout: float = 30.0) -> bool:
    async with asyncio.timeout(timeout):
        while True:
            try:
                await actor.ping.remote()
            except RayActorError:
                return True
            await asyncio.sleep(0.1)


def _between(frames: list[dict[str, Any]], first: str, last: str) -> list[str]:
    types = [f["type"] for f in frames]
    start = types.index(first)
    end = types.index(last, start)
    return types[start + 1 : end]


async def test_countdown_events_arrive_in_seq_order_in_the_contract_format(plane: Any) -> None:
    sock = await _socket(plane)
    job = control_plane.submit("jobs.examples:countdown", steps=5, delay=0.02)
    ack = await sock.subscribe(f"job:{job.job_id}", since=0)
    assert ack["type"] == "ack" and ack["data"]["recovered"] is True
    await sock.wait_type("job.completed", job.job_id)
    events = sock.events(job.job_id)
    assert [e["type"] for e in events] == (
        ["job.created", "job.started"] + ["job.progress"] * 5 + ["job.completed"]
    )
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    for e in events:
        assert set(e) - {"shard"} == {"type", "timestamp", "seq", "channel", "data", *e["data"]}
        assert ISO_UTC.match(e["timestamp"]), e["timestamp"]
        assert e["channel"] == f"job:{job.job_id}"
        assert e["data"]["job_id"] == job.job_id and "status" in e["data"]
    assert [e["data"]["progress"] for e in events if e["type"] == "job.progress"] == [
        20.0,
        40.0,
        60.0,
        80.0,
        100.0,
    ]
    assert events[-1]["data"]["result"] == {"steps": 5}
    assert ray.get(job.result) == {"steps": 5}
    await sock.close()


async def test_pause_over_the_socket_holds_the_job_and_resume_continues(plane: Any) -> None:
    sock = await _socket(plane)
    job = control_plane.submit("jobs.examples:countdown", steps=400, delay=0.01)
    await sock.subscribe(f"job:{job.job_id}")
    await sock.wait_type("job.progress", job.job_id)
    reply = await sock.request({"type": "job.pause", "job_id": job.job_id})
    assert reply["type"] == "ack", reply
    assert reply["data"]["status"]["state"] == "paused"
    paused = await sock.wait_type("job.paused", job.job_id)
    held_at = job.status().progress
    await asyncio.sleep(0.3)  # an observation window: nothing may move while paused
    assert job.status().progress == held_at
    assert job.status().state == "paused"
    reply = await sock.request({"type": "job.resume", "job_id": job.job_id})
    assert reply["data"]["status"]["state"] == "running"
    await sock.wait_type("job.resumed", job.job_id)
    after = await sock.wait_for(
        lambda f: (
            f["type"] == "job.progress"
            and f["seq"] > paused["seq"]
            and f["data"]["job_id"] == job.job_id
        )
    )
    events = sock.events(job.job_id)
    assert "job.progress" not in _between(events, "job.paused", "job.resumed")
    # it continued from where it was: the next step, not a restart
    assert after["data"]["progress"] == pytest.approx(held_at + 100 / 400)
    job.cancel()
    await sock.close()


async def test_pause_through_the_actor_handle(plane: Any) -> None:
    job = control_plane.submit("jobs.examples:countdown", steps=400, delay=0.01)
    ray.get(job.actor.status.remote())
    status = await job.actor.pause.remote()
    assert status.state == "paused"
    first = (await job.actor.status.remote()).progress
    await asyncio.sleep(0.2)
    assert (await job.actor.status.remote()).progress == first
    assert (await job.actor.resume.remote()).state == "running"
    async with asyncio.timeout(10):
        while (await job.actor.status.remote()).progress <= first:
            await asyncio.sleep(0.02)
    await job.actor.cancel.remote()


async def test_pause_through_the_job_controller(plane: Any) -> None:
    controller = JobController()
    job = control_plane.submit("jobs.examples:countdown_sync", steps=400, delay=0.01)
    await job.actor.status.remote()
    status = await controller.pause_job(job.job_id)
    assert status.state == "paused"
    assert (await controller.get_status(job.job_id)).state == "paused"
    assert (await controller.resume_job(job.job_id)).state == "running"
    status = await controller.cancel_job(job.job_id)
    assert status.state == "cancelled" and not status.forced
    with pytest.raises(JobCancelledError):
        await job.result


async def test_cancel_of_a_cooperative_job_ends_cancelled_and_frees_the_actor(plane: Any) -> None:
    sock = await _socket(plane)
    job = control_plane.submit("jobs.examples:countdown", steps=1000, delay=0.01)
    await sock.subscribe(f"job:{job.job_id}")
    await sock.wait_type("job.progress", job.job_id)
    reply = await sock.request({"type": "job.cancel", "job_id": job.job_id})
    assert reply["data"]["status"]["state"] == "cancelled"
    event = await sock.wait_type("job.cancelled", job.job_id)
    assert event["data"]["forced"] is False
    with pytest.raises(JobCancelledError) as info:
        ray.get(job.result)
    assert info.value.forced is False
    assert await _actor_gone(job.actor)
    assert job.status().state == "cancelled"
    await sock.close()


async def test_suspend_ends_the_actor_and_resume_goes_on_from_the_last_save(plane: Any) -> None:
    sock = await _socket(plane)
    job = control_plane.submit("jobs.examples:resumable_sum", steps=40, delay=0.05)
    await sock.subscribe(f"job:{job.job_id}")
    await sock.wait_for(
        lambda f: (
            f["type"] == "job.progress"
            and f["data"]["job_id"] == job.job_id
            and f["data"]["progress"] >= 25
        )
    )
    first = job.actor
    status = await first.suspend.remote()  # the actor handle's suspend
    assert status.state == "suspended"
    suspended = await sock.wait_type("job.suspended", job.job_id)
    assert await _actor_gone(first)
    assert job.status().state == "suspended"
    status = await JobController().resume_job(job.job_id)
    assert status.state in ("pending", "running")
    value = await job.result
    assert value["total"] == sum(range(40)) and value["runs"] == 2, value
    assert value["resumed_from"] == round(suspended["data"]["progress"] * 40 / 100), value
    assert _between(sock.events(job.job_id), "job.suspended", "job.resumed") == []
    await sock.close()


@pytest.mark.parametrize("target", ["jobs.examples:spin", "jobs.examples:spin_sync"])
async def test_cancel_of_a_job_without_checkpoints_is_forced_after_the_grace(
    plane: Any, target: str
) -> None:
    sock = await _socket(plane)
    job = control_plane.submit(target, job_options={"cancel_grace": 0.5, "pause_timeout": 0.3})
    await sock.subscribe(f"job:{job.job_id}")
    await sock.wait_type("job.started", job.job_id)
    # status and pause answer while the body is busy
    assert (await job.actor.status.remote()).state == "running"
    assert (await job.actor.pause.remote()).state == "pausing"
    status = await JobController().cancel_job(job.job_id)
    assert status.state == "cancelled" and status.forced
    event = await sock.wait_type("job.cancelled", job.job_id)
    assert event["data"]["forced"] is True
    with pytest.raises(JobCancelledError) as info:
        ray.get(job.result, timeout=30)
    assert info.value.forced is True
    assert await _actor_gone(job.actor)
    await sock.close()


async def test_a_raising_job_reports_job_failed_and_ray_get_raises(plane: Any) -> None:
    sock = await _socket(plane)
    job = control_plane.submit("jobs.examples:fail", after=2, delay=0.01)
    await sock.subscribe(f"job:{job.job_id}", since=0)
    event = await sock.wait_type("job.failed", job.job_id)
    assert "failed on purpose" in event["data"]["error"]
    assert event["data"]["status"] == "failed"
    with pytest.raises(JobFailedError) as info:
        ray.get(job.result)
    assert "failed on purpose" in info.value.error
    assert "RuntimeError" in info.value.traceback
    await sock.close()


async def test_commands_on_a_finished_job_get_a_typed_error(plane: Any) -> None:
    sock = await _socket(plane)
    job = control_plane.submit("jobs.examples:countdown", steps=1, delay=0.0)
    assert ray.get(job.result) == {"steps": 1}
    with pytest.raises(InvalidTransitionError) as info:
        job.pause()
    assert info.value.state == "completed" and info.value.command == "pause"
    reply = await sock.request({"type": "job.resume", "job_id": job.job_id})
    assert reply["type"] == "error"
    assert reply["data"]["code"] == "invalid_transition"
    assert "completed" in reply["data"]["message"]
    reply = await sock.request({"type": "job.pause", "job_id": "no-such-job"})
    assert reply["data"]["code"] == "job_not_found"
    await sock.close()


async def test_agents_pipeline_emits_agent_events_on_the_job_channel(plane: Any) -> None:
    sock = await _socket(plane)
    lifecycle = await _socket(plane)
    await lifecycle.subscribe("jobs")
    job = control_plane.submit("jobs.examples:agents_pipeline", delay=0.05)
    await sock.subscribe(f"job:{job.job_id}", since=0)
    await sock.wait_type("job.completed", job.job_id)
    events = sock.events(job.job_id)
    agent_events = [e for e in events if e["type"].startswith("agent.")]
    started = [e for e in agent_events if e["type"] == "agent.started"]
    assert {e["data"]["name"] for e in started} == {
        "planner",
        "researcher-1",
        "researcher-2",
        "writer",
    }
    assert all(e["channel"] == f"job:{job.job_id}" for e in agent_events)
    outputs = [e for e in agent_events if e["type"] == "agent.output"]
    assert any("notes on" in e["data"]["output"] for e in outputs)
    completed = {e["data"]["agent_id"] for e in agent_events if e["type"] == "agent.completed"}
    assert completed == {e["data"]["agent_id"] for e in started}
    result = ray.get(job.result)
    assert len(result["notes"]) == 2
    # the jobs channel carries the lifecycle, keeping each event's own channel
    done = await lifecycle.wait_type("job.completed", job.job_id)
    assert done["channel"] == f"job:{job.job_id}"
    mine = [f["type"] for f in lifecycle.events(job.job_id)]
    assert "job.progress" not in mine and not any(t.startswith("agent.") for t in mine)
    assert mine[0] == "job.created" or mine[0] == "job.started"
    await sock.close()
    await lifecycle.close()


async def test_system_metrics_carry_real_figures_and_a_stall_raises_an_alert(plane: Any) -> None:
    sock = await _socket(plane)
    await sock.subscribe("system")
    metrics = await sock.wait_type("system.metrics")
    data = metrics["data"]
    assert metrics["channel"] == "system"
    assert data["nodes_alive"] >= 1
    assert data["cpu_total"] == 2.0
    assert data["memory_total"] > 0
    assert set(data["jobs"]) >= {"pending", "running", "paused", "completed", "failed"}
    job = control_plane.submit("jobs.examples:spin", job_options={"cancel_grace": 0.2})
    alert = await sock.wait_for(
        lambda f: f["type"] == "system.alert" and f["data"].get("job_id") == job.job_id,
        timeout=30,
    )
    assert alert["data"]["rule"] == "job_stalled"
    assert alert["channel"] == "system"
    job.cancel()
    await sock.close()


def test_a_job_submitted_from_a_subprocess_outlives_it(plane: Any) -> None:
    address = ray.get_runtime_context().gcs_address
    script = textwrap.dedent(
        f"""
        import ray, control_plane
        ray.init(address={address!r}, logging_level="ERROR")
        job = control_plane.submit("jobs.examples:countdown", steps=20, delay=0.05,
                                   job_owner="subprocess")
        print(job.job_id, flush=True)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    job_id = out.stdout.strip().splitlines()[-1]
    job = control_plane.get_job(job_id)
    assert ray.get(job.result, timeout=60) == {"steps": 20}
    status = job.status()
    assert status.state == "completed" and status.owner == "subprocess"
    assert job_id in {s.job_id for s in control_plane.list_jobs()}


def test_jobs_given_as_functions_run_too(plane: Any) -> None:
    def double(ctx: Any, x: int) -> int:
        ctx.checkpoint()
        ctx.progress(50)
        return 2 * x

    job = control_plane.submit(double, 21)
    assert ray.get(job.result) == 42
    statuses = {s.job_id: s for s in control_plane.list_jobs(["completed"])}
    assert statuses[job.job_id].progress == 100.0
    assert json.dumps(statuses[job.job_id].model_dump(mode="json"))


@ray.remote
class _Keeper:
    """Holds ObjectRefs a job hands out, so the test can look at its tasks."""

    def __init__(self) -> None:
        self.refs: list[Any] = []

    def put(self, refs: list[Any]) -> None:
        self.refs.extend(refs)

    def get(self) -> list[Any]:
        return self.refs


@ray.remote(num_cpus=0)
def _sleeper(seconds: float) -> str:
    time.sleep(seconds)
    return "slept"


async def _job_with_a_long_task(ctx: Any, keeper: Any) -> None:
    ref = ctx.task(_sleeper, 600)
    await keeper.put.remote([ref])
    while True:
        await ctx.checkpoint()
        await asyncio.sleep(0.02)


def test_ray_tasks_started_through_the_context_are_cancelled_with_the_job(plane: Any) -> None:
    keeper = _Keeper.remote()  # type: ignore[attr-defined]
    job = control_plane.submit(_job_with_a_long_task, keeper)
    deadline = time.monotonic() + 60
    while not ray.get(keeper.get.remote()):
        assert time.monotonic() < deadline, "the job never started its task"
        time.sleep(0.05)
    assert job.cancel().state == "cancelled"
    [task_ref] = ray.get(keeper.get.remote())
    with pytest.raises((ray.exceptions.TaskCancelledError, ray.exceptions.RayTaskError)):
        ray.get(task_ref, timeout=60)
