"""The HubReader against the hub's real log in this process (no Ray): one loop however many
start it, each entry once, new filters re-read the range, resets, errors retried."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

import pytest

from control_plane.core.hub_log import EventLog, LogEntry, ReaderFilter
from control_plane.core.protocol import make_event
from control_plane.core.reader import Backoff, HubReader, ReaderState, Reset
from tests.unit.hubfake import LogHub

FAST = Backoff(initial=0.001, cap=0.01)


class Sink:
    def __init__(self) -> None:
        self.entries: list[LogEntry] = []
        self.resets: list[Reset] = []
        self.changed = asyncio.Event()

    def take(self, entries: list[LogEntry]) -> None:
        self.entries.extend(entries)
        self.changed.set()

    async def reset(self, reset: Reset) -> None:
        self.resets.append(reset)
        self.changed.set()

    @property
    def seqs(self) -> list[int]:
        return [e.seq for e in self.entries]

    async def until(self, condition: Callable[[], bool], timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while not condition():
                self.changed.clear()
                await self.changed.wait()


@pytest.fixture
async def hub() -> LogHub:
    return LogHub(EventLog(capacity=1000, epoch="e1"))


@pytest.fixture
async def sink() -> Sink:
    return Sink()


@pytest.fixture
async def reader(hub: LogHub, sink: Sink) -> AsyncIterator[HubReader]:
    r = HubReader(
        hub, "r1", sink.take, sink.reset, wanted=ReaderFilter(frozenset({"job:a"})), backoff=FAST
    )
    yield r
    await r.stop()


async def test_racing_starts_run_one_loop_and_deliver_each_entry_once(hub, sink, reader):
    hub.head_gate = asyncio.Event()  # every starter races while the head is outstanding
    waiters = [asyncio.ensure_future(reader.ready()) for _ in range(50)]
    for _ in range(50):
        reader.start()
    await asyncio.sleep(0)
    hub.head_gate.set()
    await asyncio.gather(*waiters)
    assert hub.calls["head"] == 1
    seqs = hub.emit("a", 20)
    await sink.until(lambda: len(sink.entries) >= 20)
    await asyncio.sleep(0.05)  # a second loop, had one started, would deliver again by now
    assert sink.seqs == seqs
    assert reader.state is ReaderState.RUNNING


async def test_the_reader_starts_at_the_head_and_takes_only_its_filter(hub, sink, reader):
    hub.emit("a", 3)
    await reader.ready()
    assert reader.cursor == 3
    hub.emit("b", 2)
    wanted = hub.emit("a", 2)
    await sink.until(lambda: len(sink.entries) >= 2)
    assert sink.seqs == wanted


async def test_a_filter_changed_mid_listen_rereads_the_range_so_nothing_is_missed(
    hub, sink, reader
):
    await reader.ready()
    await sink.until(lambda: hub.calls.get("listen", 0) >= 1)  # a listen is out
    cursor = reader.cursor
    b_seqs = hub.emit("b", 3)  # the listen in flight skips these: not in its filter
    reader.want(ReaderFilter(frozenset({"job:a", "job:b"})))
    assert reader.cursor == cursor
    await sink.until(lambda: len(sink.entries) >= 3)
    assert sink.seqs == b_seqs
    assert hub.calls.get("read_filtered", 0) >= 1 or hub.log._readers["r1"].version == 2


async def test_a_new_hub_epoch_resets_the_reader_to_the_new_head(hub, sink, reader):
    await reader.ready()
    hub.emit("a", 5)
    await sink.until(lambda: len(sink.entries) == 5)
    new_log = EventLog(capacity=1000, epoch="e2")
    new_log.set_filter("r1", reader.wanted, reader.version)
    old_log, hub.log = hub.log, new_log
    old_log.append(
        [make_event("job.progress", {"job_id": "a", "status": "running", "progress": 1.0})]
    )
    # The listen out on the old log returns that; the next one sees epoch e2.
    await sink.until(lambda: bool(sink.resets))
    reset = sink.resets[0]
    assert (reset.old_epoch, reset.epoch, reset.cursor) == ("e1", "e2", 6)
    assert reset.why == "event hub restarted"
    after = hub.emit("a", 2)
    await sink.until(lambda: len(sink.entries) == 8)
    assert sink.seqs[-2:] == after and reader.epoch == "e2"


async def test_a_reader_behind_the_history_is_reset(sink):
    hub = LogHub(EventLog(capacity=10, epoch="e"))
    r = HubReader(hub, "r", sink.take, sink.reset, wanted=ReaderFilter(frozenset({"*"})))
    await r.ready()
    r.cursor = 1
    hub.emit("a", 30)  # trims far past seq 1
    try:
        await sink.until(lambda: bool(sink.resets))
        assert sink.resets[0].why == "reader fell behind"
        assert r.cursor == hub.log.head
    finally:
        await r.stop()


async def test_hub_errors_are_retried_with_backoff_and_logged_once_with_a_traceback(
    hub, sink, reader, caplog
):
    caplog.set_level(logging.WARNING, logger="control_plane.core.reader")
    await reader.ready()
    await sink.until(lambda: hub.calls.get("listen", 0) >= 1)
    hub.faults.extend([RuntimeError("boom")] * 4 + [ValueError("odd")])
    first = hub.emit("a", 1)  # the listen out returns this; the next calls fail
    await sink.until(lambda: len(sink.entries) >= 1)
    later = hub.emit("a", 3)
    await sink.until(lambda: len(sink.entries) >= 4, timeout=10)
    assert sink.seqs == first + later
    assert reader.errors == 5
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert {r.exc_info[1].__class__ for r in errors if r.exc_info} == {RuntimeError, ValueError}
    assert len(errors) == 2  # each kind once with its traceback; repeats are one-line warnings


async def test_after_an_error_the_reader_gives_the_hub_its_filter_again(hub, sink, reader):
    await reader.ready()
    await sink.until(lambda: hub.calls.get("listen", 0) >= 1)
    # The hub was left with a wrong filter for this reader, at a version it thinks newer.
    hub.log.set_filter("r1", ReaderFilter(frozenset({"job:zzz"})), reader.version + 5)
    hub.faults.append(RuntimeError("the hub failed mid-call"))
    hub.emit("zzz", 1)  # the listen out returns this, through the wrong filter
    await sink.until(lambda: len(sink.entries) >= 1)
    await sink.until(lambda: reader.errors == 1 and hub.calls.get("drop_reader", 0) >= 1)
    seqs = hub.emit("a", 2)
    await sink.until(lambda: len(sink.entries) >= 3, timeout=10)
    assert sink.seqs[1:] == seqs
    assert hub.log._readers["r1"].wanted == ReaderFilter(frozenset({"job:a"}))


async def test_an_entries_handler_that_raises_is_logged_and_the_cursor_moves_on(hub, caplog):
    delivered: list[int] = []

    def flaky(entries: list[LogEntry]) -> None:
        if not delivered:
            delivered.append(-1)
            raise KeyError("handler bug")
        delivered.extend(e.seq for e in entries)

    async def no_reset(reset: Reset) -> None:
        pass

    r = HubReader(hub, "r", flaky, no_reset, wanted=ReaderFilter(frozenset({"job:a"})))
    await r.ready()
    hub.emit("a", 2)
    async with asyncio.timeout(5):
        while r.cursor < 2:
            await asyncio.sleep(0.01)
    later = hub.emit("a", 1)
    async with asyncio.timeout(5):
        while later[0] not in delivered:
            await asyncio.sleep(0.01)
    await r.stop()
    assert delivered == [-1, *later]  # the failed batch is not handed over again
    assert "handler bug" in caplog.text


async def test_stop_cancels_the_loop_and_drops_the_reader_at_the_hub(hub, sink, reader):
    await reader.ready()
    await sink.until(lambda: "r1" in hub.log._readers)
    await reader.stop()
    assert not reader.running and reader.state is ReaderState.STOPPED
    assert "r1" not in hub.log._readers
    with pytest.raises(RuntimeError):
        reader.start()


def test_backoff_doubles_up_to_its_cap_with_jitter() -> None:
    b = Backoff(initial=0.1, cap=1.0)
    assert [b.delay(n, rand=lambda: 1.0) for n in (1, 2, 3, 4, 5, 9)] == [
        0.1,
        0.2,
        0.4,
        0.8,
        1.0,
        1.0,
    ]
    assert b.delay(3, rand=lambda: 0.0) == 0.2  # half the full delay at least
