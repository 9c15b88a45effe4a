"""Filtered readers of the EventLog: the hub sends each reader only what it takes (no Ray)."""

from __future__ import annotations

import asyncio

import pytest

from control_plane.core import hub_log as hub_module
from control_plane.core.hub_log import (
    TARGET_ALL,
    UNKNOWN_READER,
    EventLog,
    ReaderFilter,
    client_target,
)
from control_plane.core.protocol import make_event


def ev(job_id: str, event_type: str = "job.progress", i: int = 0) -> dict:
    return make_event(event_type, {"job_id": job_id, "status": "running", "progress": float(i)})


def system_event() -> dict:
    return make_event("system.alert", {"level": "info", "message": "hello"})


def wants(*channels: str, **kw: object) -> ReaderFilter:
    return ReaderFilter(frozenset(channels), **kw)  # type: ignore[arg-type]


def mixed_log() -> EventLog:
    log = EventLog(1000, epoch="e")
    log.append([ev("a", "job.started"), ev("a", i=1), ev("b", i=1), system_event()])  # 1-4
    log.append([make_event("note", {"text": "to all"})], TARGET_ALL)  # 5
    log.append([make_event("note", {"text": "to c1"})], client_target("c1"))  # 6
    log.append([ev("b", "job.completed")])  # 7
    return log


def seqs(entries: list) -> list[int]:
    return [e.seq for e in entries]


# --- select --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wanted", "expected"),
    [
        (wants("job:a"), [1, 2, 5, 6]),
        (wants("jobs"), [1, 5, 6, 7]),
        (wants("system"), [4, 5, 6]),
        (wants("*"), [1, 2, 3, 4, 5, 6, 7]),
        (wants(), [5, 6]),
        (wants(clients=frozenset({"c1"})), [5, 6]),
        (wants(clients=frozenset({"c2"})), [5]),
        (wants("job:b", broadcasts=False, clients=frozenset()), [3, 7]),
        (ReaderFilter(prefixes=("job:",), broadcasts=False, clients=frozenset()), [1, 2, 3, 7]),
    ],
)
def test_a_filter_takes_what_a_subscription_would_receive(wanted, expected):
    log = mixed_log()
    assert seqs(log.read_taken(0, wanted)) == expected


def test_latest_progress_keeps_each_channels_last_progress_and_every_other_event():
    log = EventLog(100)
    log.append([ev("a", i=1), ev("b", i=1), ev("a", "job.paused"), ev("a", i=2), ev("b", i=2)])
    latest = ReaderFilter(prefixes=("job:",), latest_progress=True)
    assert seqs(log.read_taken(0, latest)) == [3, 4, 5]


# --- filtered listen -----------------------------------------------------------------------


async def test_an_unknown_reader_is_told_so_and_its_cursor_stays():
    log = mixed_log()
    result = await log.listen("e", 2, timeout=1.0, reader="r")
    assert result.version == UNKNOWN_READER
    assert result.entries == []
    assert result.cursor == 2


async def test_a_filtered_listen_returns_what_the_filter_takes_and_moves_past_the_rest():
    log = mixed_log()
    log.set_filter("r", wants("job:b", broadcasts=False, clients=frozenset()), 1)
    result = await log.listen("e", 0, timeout=1.0, reader="r")
    assert seqs(result.entries) == [3, 7]
    assert result.cursor == 7
    assert result.version == 1
    assert not result.reset


async def test_a_filtered_listen_keeps_waiting_through_events_it_does_not_take():
    log = EventLog(100, epoch="e")
    log.set_filter("r", wants("job:a"), 1)
    waiting = asyncio.create_task(log.listen("e", 0, timeout=5.0, reader="r"))
    await asyncio.sleep(0.01)
    log.append([ev("b", i=i) for i in range(10)])
    await asyncio.sleep(0.01)
    assert not waiting.done()
    log.append([ev("a", i=1)])
    result = await asyncio.wait_for(waiting, 1.0)
    assert seqs(result.entries) == [11]
    assert result.cursor == 11


async def test_a_filtered_listen_that_times_out_still_moves_the_cursor_past_what_it_skipped():
    log = EventLog(100, epoch="e")
    log.set_filter("r", wants("job:a"), 1)
    log.append([ev("b", i=i) for i in range(5)])
    result = await log.listen("e", 0, timeout=0.01, reader="r")
    assert result.entries == []
    assert result.cursor == 5


async def test_a_new_filter_makes_a_waiting_listen_read_its_whole_range_again():
    """A socket subscribes while the replica's listen is out: the events on its channel that
    came before the new filter reached the hub are returned too."""
    log = EventLog(100, epoch="e")
    log.set_filter("r", wants("job:a"), 1)
    waiting = asyncio.create_task(log.listen("e", 0, timeout=5.0, reader="r"))
    await asyncio.sleep(0.01)
    log.append([ev("b", i=1), ev("b", i=2)])
    await asyncio.sleep(0.01)
    assert not waiting.done()
    log.set_filter("r", wants("job:a", "job:b"), 2)
    result = await asyncio.wait_for(waiting, 1.0)
    assert seqs(result.entries) == [1, 2]
    assert result.version == 2


def test_an_older_filter_version_does_not_replace_a_newer_one():
    log = mixed_log()
    log.set_filter("r", wants("job:a"), 2)
    log.set_filter("r", wants("job:b"), 1)
    result = log.read_filtered("e", 0, log.head, wants("job:a"))
    assert seqs(result.entries) == [1, 2, 5, 6]
    assert log.stats()["readers"] == 1


async def test_read_filtered_reads_only_the_range_asked_for():
    log = mixed_log()
    result = log.read_filtered("e", 1, 4, wants("*"))
    assert seqs(result.entries) == [2, 3, 4]
    assert result.cursor == 4


async def test_a_filtered_listen_over_a_long_stretch_it_does_not_take_returns_in_bounded_steps(
    monkeypatch,
):
    monkeypatch.setattr(hub_module, "SCAN_LIMIT", 100)
    log = EventLog(10_000, epoch="e")
    log.set_filter("r", wants("job:a"), 1)
    log.append([ev("b", i=i) for i in range(250)])
    first = await log.listen("e", 0, timeout=5.0, reader="r")
    assert (first.entries, first.cursor) == ([], 100)
    second = await log.listen("e", first.cursor, timeout=5.0, reader="r")
    assert second.cursor == 200


async def test_a_filtered_listen_respects_its_limit():
    log = EventLog(1000, epoch="e")
    log.set_filter("r", wants("job:a"), 1)
    log.append([ev("a", i=i) for i in range(50)])
    result = await log.listen("e", 0, timeout=1.0, limit=20, reader="r")
    assert seqs(result.entries) == list(range(1, 21))
    assert result.cursor == 20


async def test_a_filtered_reader_behind_the_history_is_reset():
    log = EventLog(10, epoch="e")
    log.set_filter("r", wants("*"), 1)
    log.append([ev("a", i=i) for i in range(30)])
    result = await log.listen("e", 2, timeout=1.0, reader="r")
    assert result.reset


async def test_a_filtered_reader_of_another_epoch_is_reset():
    log = mixed_log()
    log.set_filter("r", wants("*"), 1)
    result = await log.listen("old", 3, timeout=1.0, reader="r")
    assert result.reset
    assert result.epoch == "e"


async def test_a_controller_filter_gets_each_jobs_last_progress_of_a_burst():
    log = EventLog(1000, epoch="e")
    controller = ReaderFilter(
        prefixes=("job:",), broadcasts=False, clients=frozenset(), latest_progress=True
    )
    log.set_filter("c", controller, 1)
    log.append([ev("a", "job.started"), *(ev("a", i=i) for i in range(100)), system_event()])
    result = await log.listen("e", 0, timeout=1.0, reader="c")
    assert seqs(result.entries) == [1, 101]
    assert result.cursor == 102


def test_readers_not_heard_of_for_long_are_forgotten(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(hub_module.time, "monotonic", lambda: clock[0])
    log = EventLog(10)
    log.set_filter("old", wants("*"), 1)
    clock[0] += hub_module.READER_IDLE_LIMIT + 1
    log.set_filter("new", wants("*"), 1)
    assert log.stats()["readers"] == 1
    log.drop_reader("new")
    assert log.stats()["readers"] == 0


async def test_a_waiting_filtered_listen_answers_before_the_history_passes_its_cursor():
    """Its cursor must stay inside the history: a new filter re-reads from there."""
    log = EventLog(100, epoch="e")
    log.set_filter("r", wants("job:a"), 1)
    waiting = asyncio.create_task(log.listen("e", 0, timeout=5.0, reader="r"))
    await asyncio.sleep(0)
    for i in range(30):
        log.append([ev("b", i=i)])
        await asyncio.sleep(0)
    result = await asyncio.wait_for(waiting, 1.0)
    assert (result.entries, result.reset) == ([], False)
    assert result.cursor == 25  # a quarter of the history
    log.append([ev("b", i=i) for i in range(60)])
    log.set_filter("r", wants("job:a", "job:b"), 2)
    again = await log.listen("e", result.cursor, timeout=1.0, reader="r")
    assert not again.reset
    assert seqs(again.entries)[0] == 26
