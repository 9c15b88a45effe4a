"""JobControl and JobContext without Ray: checkpoints, pause, cancel, events, agents."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from control_plane.core.emitter import EventEmitter
from control_plane.core.encoding import Encoded, encode_event
from control_plane.core.errors import InvalidTransitionError
from control_plane.core.protocol import JOB_EVENT_TYPES, normalize_event
from jobs.context import (
    OUTPUT_PREVIEW_CHARS,
    CancelRequested,
    JobContext,
    JobControl,
    result_preview,
)
from jobs.lifecycle import JobState, Trigger

pytestmark = pytest.mark.timeout(20)

WAIT = 5.0


def decode(encoded: Encoded) -> dict[str, Any]:
    """The envelope ``{type, timestamp, data}`` of an encoded event, checking its frame."""
    event_type, channel, head, tail = encoded
    frame = json.loads(f'{head},"seq":1{tail}')
    assert (frame["type"], frame["channel"], frame["seq"]) == (event_type, channel, 1)
    assert channel == "job:j1"
    return {"type": frame["type"], "timestamp": frame["timestamp"], "data": frame["data"]}


class Recorder:
    """The emit callable: keeps every envelope (decoded) and lets a test wait for a type."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.events: list[dict[str, Any]] = []
        self.urgent: list[bool] = []

    def __call__(self, encoded: Encoded, urgent: bool) -> None:
        event = decode(encoded)
        with self.cond:
            self.events.append(event)
            self.urgent.append(urgent)
            self.cond.notify_all()

    def types(self) -> list[str]:
        with self.cond:
            return [e["type"] for e in self.events]

    def of(self, event_type: str) -> list[dict[str, Any]]:
        with self.cond:
            return [e for e in self.events if e["type"] == event_type]

    def until(self, predicate: Callable[[], bool]) -> None:
        with self.cond:
            assert self.cond.wait_for(predicate, WAIT), f"timed out; saw {self.types()}"

    def wait_for_type(self, event_type: str, count: int = 1) -> None:
        self.until(lambda: sum(e["type"] == event_type for e in self.events) >= count)


def new_control(rec: Recorder) -> JobControl:
    return JobControl("j1", "countdown", "alice", "2026-01-01T00:00:00.000Z", rec)


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


@pytest.fixture
def control(rec: Recorder) -> JobControl:
    return new_control(rec)


@pytest.fixture
def running(control: JobControl) -> JobControl:
    control.start()
    return control


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    """Run ``fn`` in a thread; the dict gets ``result`` or ``error`` and ``done``."""
    out: dict[str, Any] = {"done": threading.Event()}

    def run() -> None:
        try:
            out["result"] = fn()
        except BaseException as e:
            out["error"] = e
        finally:
            out["done"].set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


# --- start, status, events ------------------------------------------------------------------


def test_a_new_job_is_pending(control):
    status = control.status()
    assert status.state is JobState.PENDING
    assert (status.job_id, status.name, status.owner) == ("j1", "countdown", "alice")
    assert status.created_at == status.updated_at == "2026-01-01T00:00:00.000Z"
    assert status.progress == 0.0


def test_start_runs_the_job_and_emits_job_started(control, rec):
    control.start()
    assert control.state is JobState.RUNNING
    (started,) = rec.events
    assert started["type"] == "job.started"
    assert started["data"] == {"job_id": "j1", "status": "running", "name": "countdown"}
    assert rec.urgent == [True]


def test_every_job_event_is_a_valid_envelope_with_job_id_and_status(running, rec):
    ctx = JobContext(running, blocking=True)
    ctx.progress(50, "half")
    with ctx.agent("planner") as agent:
        agent.output("plan")
    running.finish(Trigger.COMPLETE, result={"ok": True})
    assert rec.events
    for event in rec.events:
        assert set(event) == {"type", "timestamp", "data"}
        assert event["data"]["job_id"] == "j1"
        assert isinstance(event["data"]["status"], str)
        # The envelope also passes the wire validation for its type.
        normalize_event(event)


def test_progress_is_clamped_recorded_and_emitted(running, rec):
    ctx = JobContext(running, blocking=True)
    ctx.progress(42.5, "working")
    ctx.progress(150)
    ctx.progress(-3)
    progress = rec.of("job.progress")
    assert [e["data"]["progress"] for e in progress] == [42.5, 100.0, 0.0]
    assert progress[0]["data"]["message"] == "working"
    assert "message" not in progress[1]["data"]
    status = running.status()
    assert status.progress == 0.0
    assert status.message == "working"  # kept until a new message comes


def test_a_progress_event_is_encoded_as_emit_would_encode_it():
    frames: list[Encoded] = []
    control = JobControl("j1", "countdown", "alice", "t", lambda e, urgent: frames.append(e))
    control.start()
    control.set_progress(100 / 3, 'step "3" ✓')
    timestamp = decode(frames[-1])["timestamp"]
    assert control.status().updated_at == timestamp  # one clock reading for both
    data = {"progress": 100 / 3, "message": 'step "3" ✓', "job_id": "j1", "status": "running"}
    event = {"type": "job.progress", "timestamp": timestamp, "data": data}
    assert frames[-1] == encode_event(event)


def test_progress_events_are_not_urgent(running, rec):
    JobContext(running, blocking=True).progress(10)
    assert rec.urgent[-1] is False


def test_a_custom_event_goes_out_with_the_job_id(running, rec):
    JobContext(running).emit("app.note", text="hi")
    (note,) = rec.of("app.note")
    assert note["data"] == {"job_id": "j1", "status": "running", "text": "hi"}


def test_a_custom_event_cannot_claim_another_jobs_id(running, rec):
    JobContext(running).emit("app.note", job_id="someone-else", text="hi")
    (note,) = rec.of("app.note")
    assert note["data"]["job_id"] == "j1"


def test_context_exposes_job_id_and_name(running):
    ctx = JobContext(running)
    assert (ctx.job_id, ctx.name) == ("j1", "countdown")
    assert not ctx.cancelled


# --- pause and resume with a blocking body --------------------------------------------------


def test_pause_waits_at_next_checkpoint(running, rec):
    ctx = JobContext(running, blocking=True)
    running.pause()
    assert running.state is JobState.PAUSING
    assert rec.of("job.paused") == []  # not held yet: the body has not reached a checkpoint

    thread, out = in_thread(ctx.checkpoint)
    rec.wait_for_type("job.paused")
    assert running.state is JobState.PAUSED
    assert not out["done"].is_set()  # held while paused

    running.resume()
    assert out["done"].wait(WAIT)
    thread.join(WAIT)
    assert "error" not in out
    assert running.state is JobState.RUNNING
    assert rec.types()[-2:] == ["job.paused", "job.resumed"]


def test_paused_is_emitted_once_and_no_progress_follows_until_resumed(running, rec):
    ctx = JobContext(running, blocking=True)
    steps = 40
    midway, go_on = threading.Event(), threading.Event()

    def body() -> None:
        for i in range(steps):
            ctx.checkpoint()
            ctx.progress(100 * (i + 1) / steps)
            if i == 2:  # let the test pause mid-run, between two checkpoints
                midway.set()
                assert go_on.wait(WAIT)

    thread, out = in_thread(body)
    assert midway.wait(WAIT)
    running.pause()
    go_on.set()
    rec.wait_for_type("job.paused")
    running.pause()  # a second pause while held changes nothing
    assert running.state is JobState.PAUSED
    assert len(rec.of("job.progress")) == 3
    assert not out["done"].is_set()
    running.resume()
    assert out["done"].wait(WAIT)
    thread.join(WAIT)
    assert "error" not in out

    types = rec.types()
    assert types.count("job.paused") == 1
    assert types.count("job.resumed") == 1
    between = types[types.index("job.paused") + 1 : types.index("job.resumed")]
    assert "job.progress" not in between
    assert types.count("job.progress") == steps


def test_paused_event_carries_the_progress_and_is_urgent(running, rec):
    ctx = JobContext(running, blocking=True)
    ctx.progress(30)
    running.pause()
    thread, out = in_thread(ctx.checkpoint)
    rec.wait_for_type("job.paused")
    (paused,) = rec.of("job.paused")
    assert paused["data"]["status"] == "paused"
    assert paused["data"]["progress"] == 30.0
    assert rec.urgent[rec.types().index("job.paused")] is True
    running.resume()
    assert out["done"].wait(WAIT)
    thread.join(WAIT)


def test_resume_before_the_checkpoint_cancels_the_pause_without_events(running, rec):
    running.pause()
    running.resume()
    assert running.state is JobState.RUNNING
    JobContext(running, blocking=True).checkpoint()  # passes at once
    assert "job.paused" not in rec.types()
    assert "job.resumed" not in rec.types()


def test_resume_of_a_running_job_changes_nothing(running, rec):
    running.resume()
    assert running.state is JobState.RUNNING
    assert rec.types() == ["job.started"]


def test_a_checkpoint_with_nothing_asked_returns_at_once(running):
    JobContext(running, blocking=True).checkpoint()
    assert running.state is JobState.RUNNING


def test_a_blocking_checkpoint_can_be_awaited_too(running):
    async def body() -> None:
        await JobContext(running, blocking=True).checkpoint()

    asyncio.run(body())


# --- cancel ---------------------------------------------------------------------------------


def test_cancel_raises_at_the_next_checkpoint(running, rec):
    ctx = JobContext(running, blocking=True)
    running.request_cancel()
    assert ctx.cancelled
    assert running.state is JobState.RUNNING  # the state moves once the body stops
    with pytest.raises(CancelRequested):
        ctx.checkpoint()
    assert running.finish(Trigger.STOPPED, forced=False)
    assert running.state is JobState.CANCELLED
    (cancelled,) = rec.of("job.cancelled")
    assert cancelled["data"]["status"] == "cancelled"
    assert cancelled["data"]["forced"] is False


def test_cancel_while_paused_releases_the_held_checkpoint_with_cancel(running, rec):
    ctx = JobContext(running, blocking=True)
    running.pause()
    thread, out = in_thread(ctx.checkpoint)
    rec.wait_for_type("job.paused")
    running.request_cancel()
    assert out["done"].wait(WAIT)
    thread.join(WAIT)
    assert isinstance(out.get("error"), CancelRequested)
    running.finish(Trigger.STOPPED, forced=False)
    assert running.state is JobState.CANCELLED


def test_cancel_is_not_swallowed_by_a_broad_except(running):
    ctx = JobContext(running, blocking=True)
    running.request_cancel()
    with pytest.raises(CancelRequested):
        try:
            ctx.checkpoint()
        except Exception:  # what a body might write
            pytest.fail("CancelRequested was caught as an Exception")


def test_cancel_of_a_pending_job_cancels_it_at_once(control, rec):
    control.request_cancel()
    assert control.state is JobState.CANCELLED
    (cancelled,) = rec.events
    assert cancelled["type"] == "job.cancelled"
    assert cancelled["data"]["status"] == "cancelled"
    with pytest.raises(CancelRequested):
        control.start()  # the body never runs
    assert not control.finish(Trigger.STOPPED, forced=False)
    assert rec.types() == ["job.cancelled"]


def test_a_pending_job_paused_then_cancelled_never_starts(control, rec):
    control.pause()
    control.request_cancel()
    with pytest.raises(CancelRequested):
        control.start()
    assert control.finish(Trigger.STOPPED, forced=False)
    assert control.state is JobState.CANCELLED
    assert rec.types() == ["job.cancelled"]


def test_cancel_twice_is_harmless(running):
    running.request_cancel()
    running.request_cancel()
    assert running.cancel_requested
    running.finish(Trigger.STOPPED)
    running.request_cancel()  # already cancelled: a no-op
    assert running.state is JobState.CANCELLED


@pytest.mark.parametrize("trigger", [Trigger.COMPLETE, Trigger.FAIL])
def test_cancel_of_a_finished_job_raises_naming_state_and_command(running, trigger):
    running.finish(trigger, error="boom")
    with pytest.raises(InvalidTransitionError) as info:
        running.request_cancel()
    assert info.value.command == "cancel"
    assert info.value.state == running.state.value


def test_pause_of_a_finished_job_raises(running):
    running.finish(Trigger.COMPLETE, result=1)
    with pytest.raises(InvalidTransitionError, match="cannot pause"):
        running.pause()


# --- finish ---------------------------------------------------------------------------------


def test_finish_emits_the_terminal_event_once(running, rec):
    assert running.finish(Trigger.COMPLETE, result={"steps": 3})
    assert not running.finish(Trigger.FAIL, error="late")
    assert not running.finish(Trigger.STOPPED, forced=True)
    terminal = [t for t in rec.types() if t in ("job.completed", "job.failed", "job.cancelled")]
    assert terminal == ["job.completed"]
    (completed,) = rec.of("job.completed")
    assert completed["data"]["result"] == {"steps": 3}
    assert completed["data"]["status"] == "completed"
    status = running.status()
    assert status.state is JobState.COMPLETED
    assert status.progress == 100.0


def test_a_failure_records_its_error(running, rec):
    assert running.finish(Trigger.FAIL, error="ValueError: boom")
    assert running.status().error == "ValueError: boom"
    (failed,) = rec.of("job.failed")
    assert failed["data"]["error"] == "ValueError: boom"
    assert failed["data"]["status"] == "failed"


def test_a_forced_stop_is_recorded(running, rec):
    assert running.finish(Trigger.STOPPED, forced=True)
    assert running.status().forced
    assert rec.of("job.cancelled")[0]["data"]["forced"] is True


def test_terminal_events_are_urgent(running, rec):
    running.finish(Trigger.COMPLETE, result=None)
    assert rec.urgent[-1] is True


def test_no_progress_is_emitted_after_the_terminal_event(running, rec):
    ctx = JobContext(running, blocking=True)
    running.request_cancel()
    running.finish(Trigger.STOPPED, forced=True)  # the grace period ran out
    ctx.progress(60)  # the body has not noticed yet
    assert rec.types()[-1] == "job.cancelled"


def test_a_job_paused_and_resumed_before_it_started_still_starts(control, rec):
    control.pause()
    control.resume()
    control.start()
    assert control.state is JobState.RUNNING
    assert "job.started" in rec.types()


def test_a_job_paused_before_it_started_holds_at_its_first_checkpoint(control, rec):
    control.pause()
    control.start()
    assert control.state is JobState.PAUSING
    ctx = JobContext(control, blocking=True)
    thread, out = in_thread(ctx.checkpoint)
    rec.wait_for_type("job.paused")
    assert not out["done"].is_set()
    control.resume()
    assert out["done"].wait(WAIT)
    thread.join(WAIT)
    assert rec.types() == ["job.started", "job.paused", "job.resumed"]


# --- agents ---------------------------------------------------------------------------------


def test_an_agent_scope_emits_started_output_and_completed(running, rec):
    ctx = JobContext(running, blocking=True)
    with ctx.agent("planner") as agent:
        agent.output("step one")
    started, output, completed = (e for e in rec.events if e["type"].startswith("agent."))
    assert started["type"] == "agent.started"
    assert started["data"]["name"] == "planner"
    agent_id = started["data"]["agent_id"]
    assert output["type"] == "agent.output"
    assert output["data"]["agent_id"] == agent_id
    assert output["data"]["output"] == "step one"
    assert completed["type"] == "agent.completed"
    assert completed["data"]["agent_id"] == agent_id


def test_each_agent_gets_its_own_id(running, rec):
    ctx = JobContext(running)
    a, b = ctx.agent("worker"), ctx.agent("worker")
    assert a.agent_id != b.agent_id
    assert a.name == b.name == "worker"


def test_an_agent_that_raises_emits_failed_and_the_error_propagates(running, rec):
    ctx = JobContext(running, blocking=True)
    with pytest.raises(ValueError, match="boom"), ctx.agent("critic") as agent:
        raise ValueError("boom")
    (failed,) = rec.of("agent.failed")
    assert failed["data"]["agent_id"] == agent.agent_id
    assert failed["data"]["error"] == "ValueError: boom"
    assert rec.of("agent.completed") == []


def test_an_agent_stopped_by_cancel_reports_cancelled(running, rec):
    ctx = JobContext(running, blocking=True)
    running.request_cancel()
    with pytest.raises(CancelRequested), ctx.agent("writer"):
        ctx.checkpoint()
    assert rec.of("agent.failed")[0]["data"]["error"] == "cancelled"


async def test_an_async_agent_scope_emits_the_same_events(running, rec):
    ctx = JobContext(running)
    async with ctx.agent("planner") as agent:
        agent.output({"plan": [1, 2]})
    with pytest.raises(RuntimeError):
        async with ctx.agent("critic"):
            raise RuntimeError("nope")
    assert [t for t in rec.types() if t.startswith("agent.")] == [
        "agent.started",
        "agent.output",
        "agent.completed",
        "agent.started",
        "agent.failed",
    ]
    assert rec.of("agent.output")[0]["data"]["output"] == "{'plan': [1, 2]}"
    assert rec.of("agent.failed")[0]["data"]["error"] == "RuntimeError: nope"


def test_long_agent_output_is_cut_to_a_preview(running, rec):
    ctx = JobContext(running)
    with ctx.agent("talker") as agent:
        agent.output("x" * (OUTPUT_PREVIEW_CHARS * 3))
        agent.output("y" * OUTPUT_PREVIEW_CHARS)
    long, exact = (e["data"]["output"] for e in rec.of("agent.output"))
    assert len(long) == OUTPUT_PREVIEW_CHARS
    assert long.endswith("…")
    assert exact == "y" * OUTPUT_PREVIEW_CHARS


# --- result_preview -------------------------------------------------------------------------


@pytest.mark.parametrize("value", [None, 3, "text", {"steps": 5}, [1, 2, {"a": None}]])
def test_a_small_json_result_is_kept_as_it_is(value):
    assert result_preview(value) == value


def test_a_result_that_is_not_json_becomes_its_repr():
    value = {1, 2}
    assert result_preview(value) == repr(value)


def test_a_large_result_is_cut_to_the_limit():
    preview = result_preview(list(range(10_000)), limit=100)
    assert isinstance(preview, str)
    assert len(preview) == 100
    assert preview.startswith("[0, 1, 2")
    assert preview.endswith("…")


# --- the async checkpoint -------------------------------------------------------------------


async def until_waiting(control: JobControl, count: int = 1) -> None:
    """Yield to the loop until ``count`` coroutines (on any loop) wait on ``control``.

    JobControl offers no event for "someone waits", so this yields (never sleeps) with a
    bounded deadline.
    """
    deadline = time.monotonic() + WAIT
    while control.waiter_count() < count:
        assert time.monotonic() < deadline, "nobody started waiting"
        await asyncio.sleep(0)


async def test_an_async_checkpoint_with_nothing_asked_returns_at_once(running):
    await JobContext(running).checkpoint()
    assert running.waiter_count() == 0


async def test_resume_from_another_thread_wakes_an_async_checkpoint(running, rec):
    ctx = JobContext(running)
    running.pause()
    task = asyncio.ensure_future(ctx.checkpoint())
    await until_waiting(running)
    assert rec.of("job.paused")
    assert not task.done()

    resumer = threading.Thread(target=running.resume)
    resumer.start()
    await asyncio.wait_for(task, WAIT)
    resumer.join(WAIT)
    assert running.state is JobState.RUNNING
    assert running.waiter_count() == 0
    assert rec.types()[-2:] == ["job.paused", "job.resumed"]


async def test_cancel_from_another_thread_raises_in_a_paused_async_checkpoint(running):
    ctx = JobContext(running)
    running.pause()
    task = asyncio.ensure_future(ctx.checkpoint())
    await until_waiting(running)
    canceller = threading.Thread(target=running.request_cancel)
    canceller.start()
    with pytest.raises(CancelRequested):
        await asyncio.wait_for(task, WAIT)
    canceller.join(WAIT)
    assert running.waiter_count() == 0


async def test_an_async_body_pauses_and_resumes_under_control_from_another_thread(running, rec):
    ctx = JobContext(running)
    steps = 20

    async def body() -> None:
        for i in range(steps):
            await ctx.checkpoint()
            ctx.progress(100 * (i + 1) / steps)
            if i == 2:  # stay between two checkpoints until the pause is asked
                assert await running.wait_for(lambda: running.state is not JobState.RUNNING, WAIT)

    def controller() -> None:
        rec.until(lambda: len(rec.of("job.progress")) >= 3)
        running.pause()
        rec.wait_for_type("job.paused")
        running.resume()

    thread, out = in_thread(controller)
    await asyncio.wait_for(body(), WAIT)
    thread.join(WAIT)
    assert "error" not in out
    types = rec.types()
    assert types.count("job.paused") == types.count("job.resumed") == 1
    between = types[types.index("job.paused") + 1 : types.index("job.resumed")]
    assert "job.progress" not in between
    assert types.count("job.progress") == steps


async def test_cancel_raises_at_an_async_checkpoint(running):
    running.request_cancel()
    with pytest.raises(CancelRequested):
        await JobContext(running).checkpoint()


async def test_wait_for_returns_true_at_once_when_the_predicate_holds(running):
    assert await running.wait_for(lambda: True, timeout=WAIT)
    assert running.waiter_count() == 0


async def test_wait_for_times_out_and_forgets_its_waiter(running):
    assert not await running.wait_for(lambda: False, timeout=0.02)
    assert running.waiter_count() == 0


async def test_wait_for_wakes_on_a_change_made_in_another_thread(running):
    waiting = asyncio.ensure_future(
        running.wait_for(lambda: running.state is JobState.PAUSING, timeout=WAIT)
    )
    await until_waiting(running)
    pauser = threading.Thread(target=running.pause)
    pauser.start()
    assert await waiting
    pauser.join(WAIT)
    assert running.waiter_count() == 0


async def test_several_loops_can_wait_on_one_job(running):
    # The actor's control loop waits (pause()) while the body's loop is held.
    held = asyncio.ensure_future(JobContext(running).checkpoint())
    running.pause()

    def other_loop() -> bool:
        return asyncio.run(
            running.wait_for(lambda: running.state is JobState.RUNNING, timeout=WAIT)
        )

    await until_waiting(running)
    thread, out = in_thread(other_loop)
    await until_waiting(running, 2)
    running.resume()
    await asyncio.wait_for(held, WAIT)
    assert out["done"].wait(WAIT)
    thread.join(WAIT)
    assert out["result"] is True
    assert running.waiter_count() == 0


def test_all_job_event_types_are_known(running, rec):
    # Everything JobControl emits about the job itself is a contract job.* type.
    ctx = JobContext(running, blocking=True)
    ctx.progress(1)
    running.pause()
    thread, _ = in_thread(ctx.checkpoint)
    rec.wait_for_type("job.paused")
    running.resume()
    thread.join(WAIT)
    running.finish(Trigger.COMPLETE, result=None)
    assert {t for t in rec.types() if t.startswith("job.")} <= JOB_EVENT_TYPES


def test_control_calls_answer_while_a_slow_hub_holds_back_the_body():
    gate = threading.Event()
    sending = threading.Event()

    def send(batch: list[Encoded]) -> int:
        sending.set()
        gate.wait(WAIT)
        return 0

    emitter = EventEmitter(
        send, lambda handles, timeout: None, interval=0.001, max_batch=1, max_buffer=1
    )
    second_progress = threading.Event()

    def emit(event: Encoded, urgent: bool) -> None:
        if event[0] == "job.progress" and decode(event)["data"]["progress"] == 2:
            second_progress.set()  # JobControl holds its lock from here until emit returns
        emitter.emit(event, urgent)

    control = JobControl("j1", "countdown", "alice", "t", emit)
    control.start()  # job.started: taken by the flusher, which is now held in send
    assert sending.wait(WAIT)
    ctx = JobContext(control, blocking=True)
    ctx.progress(1)  # fills the one-event buffer
    body, body_out = in_thread(lambda: ctx.progress(2))  # blocks inside emit
    assert second_progress.wait(WAIT)
    try:
        _, status_out = in_thread(control.status)
        answered = status_out["done"].wait(0.5)
    finally:
        gate.set()
        assert body_out["done"].wait(WAIT)
        body.join(WAIT)
        emitter.close(timeout=WAIT)
    assert answered
