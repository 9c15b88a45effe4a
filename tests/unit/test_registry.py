"""JobRegistry: the controller's view of every job, fed by hub events (no Ray)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from control_plane.core.hub_log import EventLog
from control_plane.core.protocol import make_event
from control_plane.core.registry import RECENT_OUTPUTS, IdempotencyCache, JobRecord, JobRegistry
from jobs.lifecycle import JobState


def record(job_id: str = "j1", state: JobState = JobState.PENDING) -> JobRecord:
    return JobRecord(job_id, "countdown", "alice", "2026-01-01T00:00:00.000Z", state=state)


def job_event(event_type: str, job_id: str = "j1", **data) -> dict:
    return make_event(event_type, {"job_id": job_id, "status": "x", **data})


@pytest.fixture
def registry() -> JobRegistry:
    reg = JobRegistry()
    reg.add(record())
    return reg


def test_added_records_can_be_found(registry):
    assert "j1" in registry
    assert len(registry) == 1
    assert registry.get("j1").name == "countdown"
    assert registry.get("nope") is None
    assert [r.job_id for r in registry.records()] == ["j1"]


@pytest.mark.parametrize(
    ("event_type", "state"),
    [
        ("job.created", JobState.PENDING),
        ("job.started", JobState.RUNNING),
        ("job.paused", JobState.PAUSED),
        ("job.resumed", JobState.RUNNING),
        ("job.completed", JobState.COMPLETED),
        ("job.failed", JobState.FAILED),
        ("job.cancelled", JobState.CANCELLED),
    ],
)
def test_lifecycle_events_set_the_state(registry, event_type, state):
    assert registry.apply(job_event(event_type)) is registry.get("j1")
    assert registry.get("j1").state is state


def test_progress_updates_progress_message_and_time(registry):
    event = job_event("job.progress", progress=42.0, message="half way")
    registry.apply(event)
    rec = registry.get("j1")
    assert rec.progress == 42.0
    assert rec.message == "half way"
    assert rec.updated_at == event["timestamp"]
    registry.apply(job_event("job.progress", progress=50.0))
    assert rec.message == "half way"  # kept when a progress has none


def test_completed_sets_progress_to_100(registry):
    registry.apply(job_event("job.progress", progress=60.0))
    registry.apply(job_event("job.completed", result=1))
    assert registry.get("j1").progress == 100.0


def test_failed_and_cancelled_record_their_details(registry):
    registry.add(record("j2"))
    registry.apply(job_event("job.failed", error="ValueError: boom"))
    registry.apply(job_event("job.cancelled", job_id="j2", forced=True))
    assert registry.get("j1").error == "ValueError: boom"
    assert registry.get("j2").forced is True


def test_a_finished_job_keeps_its_final_state(registry):
    registry.apply(job_event("job.completed"))
    registry.apply(job_event("job.failed", error="late"))
    registry.apply(job_event("job.started"))
    assert registry.get("j1").state is JobState.COMPLETED
    assert registry.get("j1").error is None


def test_events_of_unknown_jobs_and_non_job_events_are_ignored(registry):
    assert registry.apply(job_event("job.started", job_id="other")) is None
    assert registry.apply(job_event("app.note", text="hi")) is None
    assert registry.apply(make_event("system.alert", {"level": "info", "message": "m"})) is None
    assert registry.apply({}) is None
    assert registry.get("j1").state is JobState.PENDING


def test_agent_events_are_tracked_on_their_job(registry):
    rec = registry.get("j1")
    assert registry.apply(job_event("agent.started", agent_id="p-1", name="planner")) is rec
    registry.apply(job_event("agent.output", agent_id="p-1", output="plan"))
    registry.apply(job_event("agent.started", agent_id="c-2", name="critic"))
    registry.apply(job_event("agent.failed", agent_id="c-2", error="ValueError: no"))
    registry.apply(job_event("agent.completed", agent_id="p-1"))
    assert rec.agents["p-1"] == {"agent_id": "p-1", "name": "planner", "state": "completed"}
    assert rec.agents["c-2"]["state"] == "failed"
    assert rec.agents["c-2"]["error"] == "ValueError: no"
    (output,) = rec.outputs
    assert (output["agent_id"], output["output"]) == ("p-1", "plan")
    assert rec.state is JobState.PENDING  # agents do not move the job


def test_only_the_recent_agent_outputs_are_kept(registry):
    rec = registry.get("j1")
    for i in range(RECENT_OUTPUTS + 5):
        registry.apply(job_event("agent.output", agent_id="a", output=str(i)))
    assert [o["output"] for o in rec.outputs] == [str(i) for i in range(5, RECENT_OUTPUTS + 5)]


def test_the_record_remembers_the_last_seq_it_saw(registry):
    log = EventLog(10)
    log.append([job_event("job.started"), job_event("agent.output", agent_id="a", output="")])
    for entry in log.read(0):
        registry.apply_frame(entry.frame)
    assert registry.get("j1").last_seq == 2
    registry.apply(job_event("job.progress", progress=1.0))  # no seq: keeps the last one
    assert registry.get("j1").last_seq == 2


def test_a_snapshot_carries_status_agents_outputs_and_seq(registry):
    registry.apply({**job_event("job.started"), "seq": 7})
    registry.apply(job_event("job.progress", progress=30.0, message="m"))
    registry.apply(job_event("agent.started", agent_id="p-1", name="planner"))
    registry.apply(job_event("agent.output", agent_id="p-1", output="x"))
    snap = registry.get("j1").snapshot()
    assert snap["job_id"] == "j1"
    assert snap["state"] == snap["status"] == "running"
    assert snap["progress"] == 30.0
    assert snap["message"] == "m"
    assert snap["agents"] == [{"agent_id": "p-1", "name": "planner", "state": "output"}]
    assert [o["output"] for o in snap["recent_outputs"]] == ["x"]
    assert snap["seq"] == 7
    json.dumps(snap)  # goes on the wire as it is


def test_status_reflects_the_record(registry):
    registry.apply(job_event("job.started"))
    status = registry.get("j1").status()
    assert status.job_id == "j1"
    assert status.state is JobState.RUNNING
    assert status.owner == "alice"
    assert status.updated_at != ""


def test_a_record_without_updates_reports_created_at_as_updated_at():
    assert record().status().updated_at == "2026-01-01T00:00:00.000Z"


def test_apply_frame_reads_hub_frames(registry):
    log = EventLog(10)
    entries = log.append(
        [
            job_event("job.started"),
            job_event("job.progress", progress=10.0),
            make_event("system.metrics", {"nodes_alive": 1}),
            make_event("app.note", {"text": "no job"}),
        ]
    )
    results = [registry.apply_frame(e.frame) for e in entries]
    assert results[0] is registry.get("j1")
    assert results[1] is registry.get("j1")
    assert results[2:] == [None, None]
    assert registry.get("j1").state is JobState.RUNNING
    assert registry.get("j1").progress == 10.0


def test_apply_frame_accepts_compact_json_too(registry):
    frame = (
        '{"type":"job.started","timestamp":"t","seq":1,"channel":"job:j1","data":{"job_id":"j1"}}'
    )
    assert registry.apply_frame(frame) is registry.get("j1")
    assert registry.get("j1").state is JobState.RUNNING


def test_counts_cover_every_state(registry):
    registry.add(record("j2"))
    registry.add(record("j3"))
    registry.apply(job_event("job.started", job_id="j2"))
    registry.apply(job_event("job.completed", job_id="j3"))
    counts = registry.counts()
    assert set(counts) == {s.value for s in JobState}
    assert counts["pending"] == 1
    assert counts["running"] == 1
    assert counts["completed"] == 1
    assert counts["failed"] == 0
    assert sum(counts.values()) == 3


def test_stalled_lists_running_jobs_silent_for_too_long(registry):
    registry.add(record("j2"))
    registry.add(record("j3"))
    registry.apply(job_event("job.started"))
    registry.apply(job_event("job.started", job_id="j2"))
    registry.apply(job_event("job.paused", job_id="j2"))  # paused jobs are quiet on purpose
    rec = registry.get("j1")
    assert registry.stalled(rec.last_change + 5, after=10) == []
    assert registry.stalled(rec.last_change + 11, after=10) == [rec]


def test_a_stall_alert_is_not_repeated_until_the_job_speaks_again(registry):
    registry.apply(job_event("job.started"))
    rec = registry.get("j1")
    rec.stall_alerted = True
    assert registry.stalled(rec.last_change + 100, after=10) == []
    registry.apply(job_event("job.progress", progress=1.0))
    assert rec.stall_alerted is False
    assert registry.stalled(rec.last_change + 100, after=10) == [rec]


def test_finished_jobs_beyond_the_bound_are_trimmed_oldest_first():
    registry = JobRegistry(max_finished=2)
    for i in range(5):
        registry.add(record(f"j{i}"))
    for i in range(4):
        registry.apply(job_event("job.completed", job_id=f"j{i}"))
    assert sorted(r.job_id for r in registry.records()) == ["j2", "j3", "j4"]
    assert registry.get("j4").state is JobState.PENDING  # active jobs are never trimmed


def test_adding_finished_records_trims_too():
    registry = JobRegistry(max_finished=1)
    registry.add(record("a", JobState.FAILED))
    registry.add(record("b", JobState.CANCELLED))
    assert [r.job_id for r in registry.records()] == ["b"]


# --- IdempotencyCache -----------------------------------------------------------------------


class Counting:
    """An action that counts its runs and can be held open with ``gate``."""

    def __init__(self, result: object = "ok", error: Exception | None = None) -> None:
        self.runs = 0
        self.result = result
        self.error = error
        self.gate = asyncio.Event()
        self.gate.set()
        self.started = asyncio.Event()

    async def __call__(self) -> object:
        self.runs += 1
        self.started.set()
        await self.gate.wait()
        if self.error is not None:
            raise self.error
        return self.result


async def test_a_repeated_command_runs_once_and_gets_the_same_answer():
    cache = IdempotencyCache()
    action = Counting({"state": "paused"})
    assert await cache.run(("client", "r1"), action) == {"state": "paused"}
    assert await cache.run(("client", "r1"), action) == {"state": "paused"}
    assert action.runs == 1


async def test_different_keys_run_separately():
    cache = IdempotencyCache()
    action = Counting()
    await cache.run(("a", "1"), action)
    await cache.run(("a", "2"), action)
    await cache.run(("b", "1"), action)
    assert action.runs == 3


async def first_run_held() -> tuple[IdempotencyCache, Counting, asyncio.Future[Any]]:
    """A cache whose first run of ("c", "1") has started and waits on ``action.gate``."""
    cache = IdempotencyCache()
    action = Counting("done")
    action.gate.clear()
    first = asyncio.ensure_future(cache.run(("c", "1"), action))
    await asyncio.wait_for(action.started.wait(), 5)
    return cache, action, first


async def test_a_repeat_while_the_first_runs_waits_for_its_outcome():
    cache, action, first = await first_run_held()
    second = asyncio.ensure_future(cache.run(("c", "1"), action))
    action.gate.set()
    assert await asyncio.wait_for(asyncio.gather(first, second), 5) == ["done", "done"]
    assert action.runs == 1


async def test_a_failed_command_fails_the_same_way_when_repeated():
    cache = IdempotencyCache()
    action = Counting(error=ValueError("cannot pause"))
    for _ in range(2):
        with pytest.raises(ValueError, match="cannot pause"):
            await cache.run(("c", "1"), action)
    assert action.runs == 1


async def test_the_cache_is_bounded_oldest_first():
    cache = IdempotencyCache(size=2)
    action = Counting()
    for key in ("1", "2", "3"):
        await cache.run(("c", key), action)
    assert len(cache) == 2
    await cache.run(("c", "1"), action)  # forgotten: runs again
    await cache.run(("c", "3"), action)  # remembered
    assert action.runs == 4


async def test_a_cancelled_caller_does_not_cancel_the_command_so_a_retry_gets_its_outcome():
    cache, action, first = await first_run_held()
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert len(cache) == 1
    action.gate.set()
    assert await cache.run(("c", "1"), action) == "done"
    assert action.runs == 1


async def test_a_repeat_in_flight_is_answered_even_if_the_first_caller_is_cancelled():
    cache, action, first = await first_run_held()
    second = asyncio.ensure_future(cache.run(("c", "1"), action))
    await asyncio.sleep(0)  # let the repeat find the first one's entry
    first.cancel()
    action.gate.set()
    assert await asyncio.wait_for(second, 5) == "done"
