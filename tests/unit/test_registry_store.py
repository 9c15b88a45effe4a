"""The controller's store: what a restarted controller reads back, in milliseconds."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from control_plane.core.registry import JobRecord, JobRegistry, record_from_stored, stored_state
from control_plane.core.registry_store import (
    CheckpointTooLarge,
    SqliteRegistryStore,
    StoredJob,
    StoredOutcome,
)
from jobs.lifecycle import TERMINAL_STATES, JobState


def job(job_id: str, state: str = "pending", **kw: object) -> StoredJob:
    return StoredJob(job_id, "countdown", "alice", "t0", b"spec-" + job_id.encode(), state, **kw)


def test_a_reopened_store_gives_back_every_job_in_submit_order(tmp_path: Path) -> None:
    path = tmp_path / "registry.sqlite3"
    store = SqliteRegistryStore(path)
    for job_id in ("b", "a", "c"):
        store.put_job(job(job_id))
    store.update_jobs([job("a", "running", progress=40.0, message="m", updated_at="t1")])
    store.close()
    again = SqliteRegistryStore(path)
    jobs = again.jobs()
    assert [j.job_id for j in jobs] == ["b", "a", "c"]
    a = jobs[1]
    assert (a.state, a.progress, a.message, a.updated_at, a.spec) == (
        "running",
        40.0,
        "m",
        "t1",
        b"spec-a",
    )
    again.put_job(job("d"))  # submit order goes on after a reopen
    assert [j.job_id for j in again.jobs()] == ["b", "a", "c", "d"]


def test_a_finished_row_is_never_reopened_by_a_late_update() -> None:
    store = SqliteRegistryStore(":memory:")
    store.put_job(job("a"))
    store.update_jobs([job("a", "completed", progress=100.0)])
    store.update_jobs([job("a", "running", progress=50.0)])
    (a,) = store.jobs()
    assert (a.state, a.progress) == ("completed", 100.0)


def test_a_suspended_row_moves_on_when_the_job_resumes() -> None:
    store = SqliteRegistryStore(":memory:")
    store.put_job(job("a", "suspended"))
    store.update_jobs([job("a", "running")])
    assert store.jobs()[0].state == "running"


def test_outcomes_round_trip_and_a_large_one_goes_to_a_file(tmp_path: Path) -> None:
    store = SqliteRegistryStore(tmp_path / "registry.sqlite3", inline_limit=1000)
    small = pickle.dumps({"steps": 3})
    large = pickle.dumps(b"x" * 5000)
    store.put_job(job("s"))
    store.put_job(job("l"))
    store.put_outcome("s", StoredOutcome("value", small))
    store.put_outcome("l", StoredOutcome("error", large))
    assert not (tmp_path / "results" / "s.pickle").exists()
    assert (tmp_path / "results" / "l.pickle").read_bytes() == large
    store.close()
    again = SqliteRegistryStore(tmp_path / "registry.sqlite3", inline_limit=1000)
    assert again.outcome("s") == StoredOutcome("value", small)
    assert again.outcome("l") == StoredOutcome("error", large)
    assert again.outcome("missing") is None
    again.forget(["l"])
    assert again.outcome("l") is None
    assert not (tmp_path / "results" / "l.pickle").exists()
    assert [j.job_id for j in again.jobs()] == ["s"]


def test_the_last_checkpoint_wins_and_an_oversized_one_is_refused() -> None:
    store = SqliteRegistryStore(":memory:", max_checkpoint=100)
    store.put_job(job("a"))
    assert store.checkpoint("a") is None
    store.put_checkpoint("a", b"1")
    store.put_checkpoint("a", b"2")
    assert store.checkpoint("a") == b"2"
    with pytest.raises(CheckpointTooLarge, match="over the limit"):
        store.put_checkpoint("a", b"x" * 101)
    assert store.checkpoint("a") == b"2"
    store.forget(["a"])
    assert store.checkpoint("a") is None


def test_a_record_survives_the_trip_through_its_row() -> None:
    registry = JobRegistry()
    record = JobRecord("j", "countdown", "alice", "t0", updated_at="t0")
    registry.add(record)
    registry.apply({"type": "job.started", "timestamp": "t1", "data": {"job_id": "j"}})
    registry.apply(
        {
            "type": "job.restarted",
            "timestamp": "t2",
            "data": {"job_id": "j", "attempt": 2, "reason": "node died"},
        }
    )
    registry.apply(
        {"type": "job.progress", "timestamp": "t3", "data": {"job_id": "j", "progress": 30}}
    )
    store = SqliteRegistryStore(":memory:")
    store.put_job(stored_state(record, spec=b"s"))
    (row,) = store.jobs()
    back = record_from_stored(row)
    assert back.status() == record.status()
    assert (back.state, back.restarts, back.progress) == (JobState.PENDING, 2, 30.0)


def test_the_store_keeps_terminal_rows_final_for_every_terminal_state() -> None:
    store = SqliteRegistryStore(":memory:")
    for state in TERMINAL_STATES:
        store.put_job(job(state.value, state.value))
        store.update_jobs([job(state.value, "running")])
    assert {j.state for j in store.jobs()} == {s.value for s in TERMINAL_STATES}
