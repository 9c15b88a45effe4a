"""The hub's write path over a real SQLite file: restore after a crash, each batch once,
nothing answered or appended that was not written (no Ray).

A "crash" here is a second :class:`LogWriter` opened over the same file while the first is
simply abandoned: what a killed hub process leaves is exactly what its commits wrote."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from control_plane.core.encoding import Encoded, encode_event
from control_plane.core.errors import EventLogError
from control_plane.core.hub_log import TARGET_ALL, EventLog
from control_plane.core.log_writer import LogWriter
from control_plane.core.sqlite_store import SQLiteEventStore


def events(job: str, start: int, count: int) -> list[Encoded]:
    return [
        encode_event(
            {
                "type": "job.progress",
                "timestamp": "2026-01-01T00:00:00.000Z",
                "data": {"job_id": job, "status": "running", "progress": float(i)},
            }
        )
        for i in range(start, start + count)
    ]


def progress(log: EventLog) -> list[tuple[str, float]]:
    """(channel, progress) of every retained entry, in seq order."""
    return [(e.channel, json.loads(e.frame)["data"]["progress"]) for e in log.read(0)]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "events.sqlite3"


def writer(path: Path, capacity: int = 1000) -> LogWriter:
    return LogWriter(capacity, SQLiteEventStore(path))


async def test_a_restarted_hub_keeps_its_epoch_history_and_seq(path):
    first = writer(path)
    first.publish(events("a", 0, 3))
    await first.publish_numbered(events("b", 0, 2), "", "pub-b", 0)
    first.publish(events("c", 0, 1), TARGET_ALL)
    again = writer(path)
    assert again.restored and again.log.epoch == first.log.epoch
    assert again.log.head == first.log.head == 6
    assert again.log.read(0) == first.log.read(0)  # the same frames, seqs and targets
    assert again.publish(events("a", 3, 1)) == 7


async def test_a_batch_sent_again_after_a_restart_is_appended_once(path):
    first = writer(path)
    for n in range(3):
        await first.publish_numbered(events("a", 10 * n, 10), "", "pub-a", n)
    again = writer(path)
    # Ray sends the calls that were in flight again, in any order: 2 was written, 3 was not.
    sent_again = [
        again.publish_numbered(events("a", 30, 10), "", "pub-a", 3),
        again.publish_numbered(events("a", 20, 10), "", "pub-a", 2),
    ]
    await asyncio.gather(*sent_again)
    assert again.log.head == 40
    assert progress(again.log) == [("job:a", float(i)) for i in range(40)]


async def test_a_batch_waiting_for_an_earlier_one_is_answered_only_once_written(path):
    w = writer(path)
    early = asyncio.ensure_future(w.publish_numbered(events("a", 10, 10), "", "pub-a", 1))
    await asyncio.sleep(0)
    assert not early.done() and w.log.head == 0
    assert SQLiteEventStore(path).load().head == 0  # not written: not answered
    await w.publish_numbered(events("a", 0, 10), "", "pub-a", 0)
    assert await early == 20
    restored = SQLiteEventStore(path).load()
    assert restored.head == 20 and restored.publishers == {"pub-a": 2}


async def test_a_refused_batch_raises_to_its_publisher_and_is_appended_nowhere(path):
    store = SQLiteEventStore(path)
    w = LogWriter(1000, store)
    await w.publish_numbered(events("a", 0, 5), "", "pub-a", 0)
    store.reopen(read_only=True)  # a read-only file (SQLITE_READONLY)
    with pytest.raises(EventLogError, match="could not be written"):
        await w.publish_numbered(events("a", 5, 5), "", "pub-a", 1)
    with pytest.raises(EventLogError):
        w.publish(events("x", 0, 1))
    assert w.log.head == 5 and w.order.expected("pub-a") == 1
    store.reopen(read_only=False)  # writable again: the same batch goes in, once
    assert await w.publish_numbered(events("a", 5, 5), "", "pub-a", 1) == 10
    assert writer(path).log.read(0) == w.log.read(0)


async def test_batches_waiting_behind_a_refused_one_are_refused_with_it(path):
    store = SQLiteEventStore(path)
    w = LogWriter(1000, store)
    waiting = asyncio.ensure_future(w.publish_numbered(events("a", 5, 5), "", "pub-a", 1))
    await asyncio.sleep(0)
    store.reopen(read_only=True)
    with pytest.raises(EventLogError):
        await w.publish_numbered(events("a", 0, 5), "", "pub-a", 0)
    with pytest.raises(EventLogError):
        await waiting
    assert w.log.head == 0 and SQLiteEventStore(path).load().head == 0


async def test_a_restart_restores_at_most_the_capacity(path):
    w = writer(path, capacity=100)
    for n in range(30):
        await w.publish_numbered(events("a", 10 * n, 10), "", "pub-a", n)
    w.retain()
    again = writer(path, capacity=100)
    assert again.log.head == 300 and len(again.log) == 100 and again.log.oldest == 201
    assert progress(again.log)[0] == ("job:a", 200.0)
    assert SQLiteEventStore(path).load().batches[0].first_seq >= 191  # the store kept ~100


def test_retention_by_age_forgets_batches_appended_before_the_cut():
    log = EventLog(1000, epoch="e")
    log.append_encoded(events("a", 0, 3), at=10.0)
    log.append_encoded(events("a", 3, 3), at=20.0)
    log.append_encoded(events("a", 6, 3), at=30.0)
    assert log.expire(before=25.0) == 7
    assert [e.seq for e in log.read(0)] == [7, 8, 9] and log.head == 9
    assert not log.covers(5) and log.covers(6)


async def test_a_store_that_lost_everything_by_age_still_keeps_the_seq(path):
    w = writer(path)
    w.publish(events("a", 0, 4))
    w.store.retain(oldest_seq=0, older_than=float("inf"), publishers_before=0.0)
    again = writer(path)
    assert len(again.log) == 0 and again.log.head == 4 and again.log.oldest == 5
    assert again.publish(events("a", 4, 1)) == 5
