"""Saving, restoring and suspending a job without Ray: ``ctx.save``, ``ctx.restored``, and a
suspend that stops the body at its next checkpoint."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from control_plane.core.errors import InvalidTransitionError, NotSuspendableError
from jobs.context import JobContext, JobControl, SuspendRequested
from jobs.lifecycle import JobState, Trigger
from tests.unit.test_context import Recorder

pytestmark = pytest.mark.timeout(20)


class MemoryCheckpointer:
    """Keeps each saved state, as the controller's store would."""

    def __init__(self) -> None:
        self.saved: list[Any] = []

    async def save_async(self, state: Any) -> None:
        await asyncio.sleep(0)
        self.saved.append(state)

    def save_blocking(self, state: Any) -> None:
        self.saved.append(state)


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


def started(rec: Recorder, restored: Any = None) -> tuple[JobControl, MemoryCheckpointer]:
    control = JobControl("j1", "countdown", "alice", "2026-01-01T00:00:00.000Z", rec)
    store = MemoryCheckpointer()
    control.checkpointer = store
    if restored is not None:
        control.restored, control.has_saved = restored, True
    control.start()
    return control, store


def test_a_job_that_never_saved_cannot_be_suspended() -> None:
    control, _ = started(Recorder())
    with pytest.raises(NotSuspendableError) as info:
        control.request_suspend()
    assert info.value.code == "not_suspendable"
    assert "ctx.save" in info.value.message
    assert isinstance(info.value, InvalidTransitionError)
    assert not control.suspend_requested and control.state is JobState.RUNNING


async def test_a_suspend_stops_an_async_body_at_its_next_checkpoint_after_a_save() -> None:
    rec = Recorder()
    control, store = started(rec)
    ctx = JobContext(control)
    await ctx.save({"i": 3})
    assert store.saved == [{"i": 3}] and control.has_saved
    control.request_suspend()
    control.request_suspend()  # asked twice: once
    with pytest.raises(SuspendRequested):
        await ctx.checkpoint()
    assert control.park()
    assert control.state is JobState.SUSPENDED
    assert rec.types()[-1] == "job.suspended"
    assert rec.of("job.suspended")[0]["data"]["status"] == "suspended"
    assert not control.park()  # once


def test_a_plain_def_body_saves_and_a_paused_one_is_woken_to_suspend(rec: Recorder) -> None:
    control, store = started(rec)
    ctx = JobContext(control, blocking=True)
    ctx.save(1)
    assert store.saved == [1]
    control.pause()
    outcome: list[BaseException] = []

    def body() -> None:
        try:
            while True:
                ctx.checkpoint()
        except BaseException as e:
            outcome.append(e)

    thread = threading.Thread(target=body)
    thread.start()
    rec.wait_for_type("job.paused")
    control.request_suspend()  # held at a checkpoint: it wakes and stops
    thread.join(5)
    assert not thread.is_alive() and isinstance(outcome[0], SuspendRequested)


def test_a_restored_run_sees_its_state_and_may_be_suspended_before_it_saves() -> None:
    control, _ = started(Recorder(), restored={"i": 7})
    assert JobContext(control).restored == {"i": 7}
    control.request_suspend()
    assert control.suspend_requested


def test_a_first_run_has_nothing_restored(rec: Recorder) -> None:
    control, _ = started(rec)
    assert JobContext(control).restored is None


def test_a_finished_job_cannot_be_suspended(rec: Recorder) -> None:
    control, _ = started(rec, restored=1)
    control.finish(Trigger.COMPLETE, result=None)
    with pytest.raises(InvalidTransitionError, match="cannot suspend"):
        control.request_suspend()


def test_a_resume_before_the_next_checkpoint_calls_the_suspend_off(rec: Recorder) -> None:
    control, _ = started(rec, restored=1)
    control.request_suspend()
    control.resume()
    assert not control.suspend_requested
    control.checkpoint_blocking()  # goes on: nothing asked any more
    assert control.state is JobState.RUNNING


def test_the_actor_of_a_suspended_job_does_not_resume_itself(rec: Recorder) -> None:
    control, _ = started(rec, restored=1)
    control.request_suspend()
    with pytest.raises(SuspendRequested):
        control.checkpoint_blocking()
    control.park()
    with pytest.raises(InvalidTransitionError, match="cannot resume"):
        control.resume()
    assert control.state is JobState.SUSPENDED
