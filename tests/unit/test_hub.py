"""EventLog: numbering, frames, bounded history and cursor reads (no Ray)."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from control_plane.core.hub_log import TARGET_ALL, TARGET_CHANNEL, EventLog, client_target
from control_plane.core.protocol import Event, make_event, normalize_event


def ev(i: int = 0, job_id: str = "j1", event_type: str = "job.progress") -> dict:
    return make_event(event_type, {"job_id": job_id, "status": "running", "progress": float(i)})


def fill(log: EventLog, n: int) -> None:
    log.append(ev(i) for i in range(n))


# --- append, seq, epoch, frames -------------------------------------------------------------


def test_a_new_log_is_empty_with_head_zero():
    log = EventLog(10)
    assert log.head == 0
    assert len(log) == 0
    assert log.read(0) == []


def test_append_numbers_events_from_one_and_across_batches():
    log = EventLog(100)
    first = log.append([ev(1), ev(2)])
    second = log.append([ev(3)])
    assert [e.seq for e in first] == [1, 2]
    assert [e.seq for e in second] == [3]
    assert log.head == 3
    assert log.total_appended == 3


def test_an_empty_batch_changes_nothing():
    log = EventLog(10)
    assert log.append([]) == []
    assert log.head == 0


def test_frames_are_the_contract_envelope_in_json():
    log = EventLog(10)
    event = normalize_event({"type": "job.progress", "job_id": "7f3a", "progress": 75})
    (entry,) = log.append([event])
    frame = json.loads(entry.frame)
    assert list(frame)[:5] == ["type", "timestamp", "seq", "channel", "data"]
    assert {k: frame[k] for k in list(frame)[5:]} == frame["data"]  # the seed reads both
    assert frame["type"] == "job.progress"
    assert frame["timestamp"] == event["timestamp"]
    assert frame["seq"] == 1
    assert frame["channel"] == "job:7f3a"
    assert frame["data"]["progress"] == 75.0
    Event.model_validate(frame)


def test_entries_record_channel_type_and_target():
    log = EventLog(10)
    (job,) = log.append([ev(1, "abc")])
    (system,) = log.append([make_event("system.metrics", {"nodes_alive": 1})])
    (everyone,) = log.append([make_event("app.note", {"text": "hi"})], TARGET_ALL)
    (one,) = log.append([make_event("app.note", {})], client_target("c1"))
    assert (job.channel, job.type, job.target) == ("job:abc", "job.progress", TARGET_CHANNEL)
    assert (system.channel, system.type) == ("system", "system.metrics")
    assert everyone.target == TARGET_ALL
    assert one.target == "client:c1"


def test_an_event_keeps_a_channel_it_already_has():
    log = EventLog(10)
    event = {**ev(1), "channel": "job:other"}
    (entry,) = log.append([event])
    assert entry.channel == "job:other"
    assert json.loads(entry.frame)["channel"] == "job:other"


def test_each_log_has_its_own_epoch_unless_given_one():
    assert EventLog(10).epoch != EventLog(10).epoch
    assert EventLog(10, epoch="e1").epoch == "e1"


def test_capacity_must_be_positive():
    with pytest.raises(ValueError, match="capacity"):
        EventLog(0)


# --- bounded history ------------------------------------------------------------------------


@pytest.mark.parametrize("capacity", [1, 5, 10, 100])
def test_history_keeps_only_the_newest_capacity_events(capacity):
    log = EventLog(capacity)
    for i in range(capacity * 3 + 7):
        log.append([ev(i)])
    kept = log.read(0)
    assert len(kept) == capacity
    assert [e.seq for e in kept] == list(range(log.head - capacity + 1, log.head + 1))
    assert log.stats()["size"] == capacity
    assert log.stats()["oldest"] == kept[0].seq


def test_trimming_happens_in_chunks_but_reads_never_see_the_overflow():
    log = EventLog(100)
    fill(log, 105)  # 5 over: below the chunk, kept internally but hidden
    assert [e.seq for e in log.read(0)][:1] == [6]
    assert len(log.read(0)) == 100
    fill(log, 20)  # now 25 over: trimmed for real
    assert log.read(0)[0].seq == 26
    assert len(log.read(0)) == 100
    assert log.total_appended == 125


def test_oldest_and_len_agree_with_what_read_returns():
    log = EventLog(100)
    fill(log, 105)
    assert log.oldest == log.read(0)[0].seq == log.stats()["oldest"]
    assert len(log) == len(log.read(0)) == 100


def test_stats_describe_the_log():
    log = EventLog(10, epoch="e")
    fill(log, 4)
    stats = log.stats()
    # the bytes of the frames kept (without the seq each frame gets when it is sent)
    assert stats.pop("bytes") == sum(len(e.frame) - len(f',"seq":{e.seq}') for e in log.read(0))
    assert stats.pop("max_bytes") is None
    assert stats == {
        "epoch": "e",
        "head": 4,
        "oldest": 1,
        "size": 4,
        "capacity": 10,
        "fill": 0.4,
        "total_appended": 4,
        "readers": 0,
    }


# --- read and covers ------------------------------------------------------------------------


def test_read_returns_entries_after_the_cursor():
    log = EventLog(100)
    fill(log, 10)
    assert [e.seq for e in log.read(7)] == [8, 9, 10]
    assert log.read(10) == []
    assert log.read(50) == []
    assert [e.seq for e in log.read(2, limit=3)] == [3, 4, 5]


def test_read_before_the_oldest_starts_at_the_oldest():
    log = EventLog(5)
    fill(log, 20)
    assert [e.seq for e in log.read(3)] == [16, 17, 18, 19, 20]


def test_covers_is_true_only_while_every_later_event_is_retained():
    log = EventLog(5)
    assert log.covers(0)
    fill(log, 5)
    assert log.covers(0)
    assert log.covers(5)
    assert not log.covers(6)  # beyond the head
    fill(log, 5)  # seq 6..10 retained
    assert not log.covers(4)
    assert log.covers(5)
    assert log.covers(10)


# --- listen_now -----------------------------------------------------------------------------


def test_listen_now_returns_entries_after_the_cursor_without_reset():
    log = EventLog(100, epoch="e")
    fill(log, 5)
    result = log.listen_now("e", 3, limit=100)
    assert result.epoch == "e"
    assert [e.seq for e in result.entries] == [4, 5]
    assert result.head == 5
    assert result.oldest == 1
    assert result.reset is False


def test_listen_now_with_no_epoch_trusts_the_cursor():
    log = EventLog(100)
    fill(log, 3)
    result = log.listen_now(None, 1, limit=100)
    assert not result.reset
    assert [e.seq for e in result.entries] == [2, 3]


def test_listen_now_respects_the_limit():
    log = EventLog(100)
    fill(log, 10)
    assert [e.seq for e in log.listen_now(None, 0, limit=4).entries] == [1, 2, 3, 4]


def test_listen_now_resets_a_cursor_from_another_epoch_and_reads_from_the_oldest():
    log = EventLog(100, epoch="new")
    fill(log, 3)
    result = log.listen_now("old", 2, limit=100)
    assert result.reset
    assert result.epoch == "new"
    assert [e.seq for e in result.entries] == [1, 2, 3]


def test_listen_now_resets_a_cursor_beyond_the_head():
    log = EventLog(100, epoch="e")
    fill(log, 3)
    result = log.listen_now("e", 99, limit=100)
    assert result.reset
    assert [e.seq for e in result.entries] == [1, 2, 3]


def test_listen_now_resets_a_cursor_older_than_the_history():
    log = EventLog(5, epoch="e")
    fill(log, 20)
    result = log.listen_now("e", 3, limit=100)
    assert result.reset
    assert result.oldest == 16
    assert [e.seq for e in result.entries] == [16, 17, 18, 19, 20]


def test_listen_now_at_the_edge_of_the_history_is_not_a_reset():
    log = EventLog(5, epoch="e")
    fill(log, 20)
    result = log.listen_now("e", 15, limit=100)
    assert not result.reset
    assert [e.seq for e in result.entries] == [16, 17, 18, 19, 20]


def test_listen_now_at_the_head_is_empty_and_not_a_reset():
    log = EventLog(5, epoch="e")
    fill(log, 3)
    result = log.listen_now("e", 3, limit=100)
    assert not result.reset
    assert result.entries == []


# --- listen (long-poll) ---------------------------------------------------------------------


async def test_listen_returns_at_once_when_entries_exist():
    log = EventLog(100)
    fill(log, 3)
    start = time.monotonic()
    result = await log.listen(None, 1, timeout=30)
    assert [e.seq for e in result.entries] == [2, 3]
    assert time.monotonic() - start < 1


async def test_listen_returns_at_once_on_a_reset():
    log = EventLog(100, epoch="e")
    start = time.monotonic()
    result = await log.listen("other", 0, timeout=30)
    assert result.reset
    assert time.monotonic() - start < 1


async def test_listen_wakes_when_an_event_is_appended():
    log = EventLog(100)
    fill(log, 2)
    # Runs once listen has checked the log and gone to sleep.
    asyncio.get_running_loop().call_soon(log.append, [ev(3)])
    start = time.monotonic()
    result = await log.listen(None, 2, timeout=30)
    assert [e.seq for e in result.entries] == [3]
    assert not result.reset
    assert time.monotonic() - start < 5


async def test_every_waiting_listener_wakes_on_one_append():
    log = EventLog(100)
    listeners = [asyncio.ensure_future(log.listen(None, 0, timeout=30)) for _ in range(5)]
    asyncio.get_running_loop().call_soon(log.append, [ev(1)])
    results = await asyncio.wait_for(asyncio.gather(*listeners), timeout=5)
    assert all([e.seq for e in r.entries] == [1] for r in results)


async def test_listen_times_out_with_no_entries():
    log = EventLog(100, epoch="e")
    fill(log, 2)
    result = await log.listen("e", 2, timeout=0.05)
    assert result.entries == []
    assert not result.reset
    assert result.head == 2


async def test_listen_with_zero_timeout_does_not_wait():
    log = EventLog(100)
    result = await log.listen(None, 0, timeout=0)
    assert result.entries == []
