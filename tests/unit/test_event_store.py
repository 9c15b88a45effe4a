"""The SQLite event store: what it writes, what it gives back, and how it refuses (no Ray)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from control_plane.core.encoding import encode_event
from control_plane.core.errors import EventLogError
from control_plane.core.event_store import StoredBatch
from control_plane.core.sqlite_store import SQLiteEventStore, decode_events, encode_events


def ev(i: int, job: str = "a", text: str = "") -> tuple[str, str, str, str]:
    data = {"job_id": job, "status": "running", "progress": float(i), "message": text}
    return encode_event(
        {"type": "job.progress", "timestamp": "2026-01-01T00:00:00.000Z", "data": data}
    )


def batch(first: int, count: int, at: float = 1.0, target: str = "") -> StoredBatch:
    return StoredBatch(first, target, at, [ev(first + k) for k in range(count)])


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "events.sqlite3"


def test_a_new_store_holds_no_log(path):
    restored = SQLiteEventStore(path).load()
    assert restored.epoch is None and restored.head == 0 and restored.batches == []


def test_what_was_appended_comes_back_after_the_file_is_opened_again(path):
    store = SQLiteEventStore(path)
    store.begin("e1")
    store.append([batch(1, 3), batch(4, 2, target="*all")], {"job-a": 2})
    store.append([batch(6, 1)], {"job-a": 3, "job-b": 1})
    store.close()  # as a killed process leaves it: every commit is in the WAL
    restored = SQLiteEventStore(path).load()
    assert restored.epoch == "e1" and restored.head == 6
    assert restored.batches == [batch(1, 3), batch(4, 2, target="*all"), batch(6, 1)]
    assert restored.publishers == {"job-a": 3, "job-b": 1}


def test_batches_are_kept_compressed(path):
    store = SQLiteEventStore(path)
    store.begin("e")
    store.append([batch(1 + 300 * k, 300) for k in range(10)], {})
    stats = store.stats()
    raw = sum(len("".join(e)) for e in batch(1, 300).events) / 300
    assert stats["events"] == 3000 and stats["batches"] == 10
    row = sqlite3.connect(path).execute("SELECT avg(length(events)) FROM batches").fetchone()
    assert row[0] / 300 < raw / 4  # progress events compress well


def test_fields_that_hold_a_nul_survive_the_round_trip():
    events = [("app.x", "job:\x00odd", '{"type":"app.x"', "}"), ev(1)]
    assert decode_events(encode_events(events)) == events


def test_retention_drops_whole_batches_before_the_oldest_kept_and_keeps_the_head(path):
    store = SQLiteEventStore(path)
    store.begin("e")
    store.append([batch(1, 5, at=10.0), batch(6, 5, at=20.0), batch(11, 5, at=30.0)], {"p": 1})
    store.retain(oldest_seq=8, older_than=0.0, publishers_before=0.0)
    assert [b.first_seq for b in store.load().batches] == [6, 11]  # 6..10 holds seq 8
    store.retain(oldest_seq=0, older_than=25.0, publishers_before=0.0)  # by age
    assert [b.first_seq for b in store.load().batches] == [11]
    store.retain(oldest_seq=16, older_than=0.0, publishers_before=float("inf"))
    restored = store.load()
    assert restored.batches == [] and restored.head == 15 and restored.publishers == {}


def test_a_full_database_refuses_a_batch_and_writes_none_of_it(path):
    store = SQLiteEventStore(path)
    store.begin("e")
    store.append([batch(1, 10)], {"p": 1})
    store.fill()  # capped at its size, as a full disk
    written = [batch(1, 10)]
    with pytest.raises(EventLogError, match="full"):  # SQLITE_FULL
        for k in range(1, 100):
            first = written[-1].last_seq + 1
            noisy = [ev(i, text=f"{i * 7919:x}" * 300) for i in range(first, first + 50)]
            store.append([StoredBatch(first, "", 1.0, noisy)], {"p": k + 1})
            written.append(StoredBatch(first, "", 1.0, noisy))
    restored = store.load()
    assert restored.batches == written  # the refused batch is not there, not even in part
    assert restored.publishers == {"p": len(written)}


def test_a_read_only_file_refuses_every_write(path):
    store = SQLiteEventStore(path)
    store.begin("e")
    store.append([batch(1, 2)], {})
    store.reopen(read_only=True)
    with pytest.raises(EventLogError, match="readonly"):
        store.append([batch(3, 2)], {})
    assert store.load().head == 2  # still readable
    store.reopen(read_only=False)
    store.append([batch(3, 2)], {})
    assert store.load().head == 4
