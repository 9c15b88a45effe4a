"""The sharded hub's rules (placement, the per-shard cursor) and a gateway session over two
shards: each shard an in-process EventLog, no Ray."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from control_plane.core.encoding import encode_event
from control_plane.core.hub_log import TARGET_ALL, EventLog
from control_plane.core.protocol import make_event
from control_plane.core.shards import (
    InvalidSinceError,
    cursor_max,
    cursor_min,
    join_epochs,
    parse_since,
    shard_of,
    shard_of_job,
    shard_tag,
    split_epoch,
    sum_stats,
    wire_cursor,
)
from control_plane.gateway.manager import WebSocketManager
from tests.unit.hubfake import LogHub
from tests.unit.test_session import CONFIG, FakeSocket, open_socket, subscribe

# --- placement ----------------------------------------------------------------------------


def test_one_shard_places_everything_on_shard_0() -> None:
    for channel in ("job:a", "jobs", "system", "audit", "*"):
        assert shard_of(channel, 1) == 0


def test_a_job_channel_is_placed_by_a_stable_hash_and_the_rest_on_shard_0() -> None:
    # CRC-32 of the channel: the same in every process (Python's hash is salted).
    assert [shard_of_job(j, 2) for j in "abcdef"] == [1, 1, 1, 0, 0, 0]
    assert shard_of_job("7f3a9c", 4) == shard_of("job:7f3a9c", 4)
    for channel in ("jobs", "system", "audit", "*"):
        assert shard_of(channel, 4) == 0
    assert shard_of("job:a", 2, target=TARGET_ALL) == 0  # a broadcast: shard 0
    assert shard_of("job:a", 2, target="client:x") == 0


def test_jobs_spread_over_the_shards() -> None:
    counts = [0, 0, 0]
    for i in range(3000):
        counts[shard_of_job(f"{i:012x}", 3)] += 1
    assert min(counts) > 800


def test_a_shard_tag_sits_in_the_frame_before_its_seq() -> None:
    _, _, head, tail = encode_event(make_event("job.progress", {"job_id": "a", "progress": 1}))
    frame = json.loads(f'{head}{shard_tag(1)},"seq":7{tail}')
    assert (frame["shard"], frame["seq"], frame["channel"]) == (1, 7, "job:a")


def test_a_data_field_named_shard_stays_in_data() -> None:
    _, _, head, tail = encode_event(make_event("app.note", {"shard": 9}))
    frame = json.loads(f'{head}{shard_tag(1)},"seq":7{tail}')
    assert frame["shard"] == 1 and frame["data"]["shard"] == 9


# --- the cursor ------------------------------------------------------------------------------


def test_since_is_parsed_per_shard() -> None:
    assert parse_since(None, 2) is None
    assert parse_since(5, 1) == [5]
    assert parse_since(0, 3) == [0, 0, 0]  # from the oldest, on every shard
    assert parse_since({"0": 120, "1": 95}, 2) == [120, 95]
    assert parse_since({"1": 95}, 2) == [0, 95]  # a shard left out starts at 0
    for bad in ({"2": 1}, {"x": 1}, {"0": -1}, -1):
        with pytest.raises(InvalidSinceError):
            parse_since(bad, 2)


def test_one_shard_keeps_the_integer_cursor_on_the_wire() -> None:
    assert wire_cursor([42]) == 42
    assert wire_cursor([120, 95]) == {"0": 120, "1": 95}


def test_epochs_join_and_split() -> None:
    assert join_epochs(["e"]) == "e"
    assert join_epochs(["a1", "b2"]) == "a1.b2"
    assert join_epochs(["a1", None]) is None
    assert split_epoch("a1.b2", 2) == ["a1", "b2"]
    assert split_epoch(None, 2) == [None, None]
    assert split_epoch("e", 1) == ["e"]
    assert split_epoch("other", 2) == ["other", "other"]  # matches no shard: not recovered


def test_cursors_merge_per_shard() -> None:
    assert cursor_max(3, 5) == 5
    assert cursor_max({"0": 3, "1": 9}, {"0": 4}) == {"0": 4, "1": 9}
    assert cursor_max(0, {"0": 4, "1": 2}) == {"0": 4, "1": 2}  # an integer: every shard
    assert cursor_min({"0": 3, "1": 9}, {"0": 4, "1": 1}) == {"0": 3, "1": 1}


def test_stats_of_shards_add_up() -> None:
    logs = [EventLog(capacity=10, epoch=e) for e in ("a", "b")]
    logs[1].append([make_event("app.note", {}) for _ in range(5)])
    stats = sum_stats([log.stats() for log in logs])
    assert (stats["head"], stats["size"], stats["capacity"]) == (5, 5, 20)
    assert stats["fill"] == 0.5 and stats["epoch"] == "a.b"
    assert sum_stats([logs[0].stats()]) == logs[0].stats()


# --- a session over two shards ----------------------------------------------------------------

# job "d" is on shard 0, job "a" on shard 1 (test_a_job_channel_is_placed_by...)


@pytest.fixture
async def hubs() -> list[LogHub]:
    return [LogHub(EventLog(capacity=10_000, epoch=e)) for e in ("e0", "e1")]


@pytest.fixture
async def manager(hubs: list[LogHub]) -> AsyncIterator[WebSocketManager]:
    m = WebSocketManager()
    m.configure(CONFIG, hubs)
    m.start()
    yield m
    await m.close_all()


def keyed(ws: FakeSocket, hubs: list[LogHub]) -> list[tuple[str, int]]:
    """(channel, seq) of the events the socket got."""
    return [(f["channel"], f["seq"]) for f in ws.events()]


async def test_a_two_shard_welcome_and_ack_carry_a_cursor_per_shard(manager, hubs):
    hubs[0].emit("d", 2)
    hubs[1].emit("a", 3)
    ws, _ = await open_socket(manager, "w")
    welcome = next(f for f in ws.sent if f["type"] == "welcome")["data"]
    assert welcome["shards"] == 2 and welcome["epoch"] == "e0.e1"
    assert set(welcome["seq"]) == {"0", "1"}  # each shard reader's cursor
    ack = await subscribe(ws, "job:a", "job:d", since=0)
    assert ack["data"]["seq"] == {"0": 2, "1": 3}  # each shard's head
    assert ack["data"]["epoch"] == "e0.e1" and ack["data"]["recovered"] is True


async def test_live_events_of_both_shards_reach_a_socket_once_in_order(manager, hubs):
    ws, _ = await open_socket(manager, "live")
    await subscribe(ws, "job:a", "job:d")
    d = hubs[0].emit("d", 5)
    a = hubs[1].emit("a", 7)
    await ws.wait_for(lambda f: f.get("channel") == "job:a" and f["seq"] == a[-1])
    await ws.wait_for(lambda f: f.get("channel") == "job:d" and f["seq"] == d[-1])
    got = keyed(ws, hubs)
    assert [s for c, s in got if c == "job:d"] == d
    assert [s for c, s in got if c == "job:a"] == a


async def test_a_resume_with_a_per_shard_since_replays_each_shard_after_its_own_cursor(
    manager, hubs
):
    d = hubs[0].emit("d", 6)
    a = hubs[1].emit("a", 4)
    hubs[0].emit_target(TARGET_ALL)  # a broadcast, on shard 0
    ws, _ = await open_socket(manager, "resume")
    ack = await subscribe(ws, "job:a", "job:d", since={"0": 3, "1": 1})
    assert ack["data"]["recovered"] is True
    await ws.wait_for(lambda f: f.get("channel") == "job:a" and f["seq"] == a[-1])
    await ws.wait_for(lambda f: f.get("channel") == "job:d" and f["seq"] == d[-1])
    more = hubs[1].emit("a", 2)  # live after the replay
    await ws.wait_for(lambda f: f.get("channel") == "job:a" and f["seq"] == more[-1])
    got = keyed(ws, hubs)
    assert [s for c, s in got if c == "job:d"] == d[3:]
    assert [s for c, s in got if c == "job:a"] == a[1:] + more


async def test_an_integer_since_means_that_seq_on_every_shard(manager, hubs):
    hubs[0].emit("d", 3)
    hubs[1].emit("a", 3)
    ws, _ = await open_socket(manager, "int")
    ack = await subscribe(ws, "job:a", "job:d", since=0)
    assert ack["data"]["oldest"] == {"0": 1, "1": 1}
    await ws.wait_for(lambda f: f.get("channel") == "job:a" and f["seq"] == 3)
    await ws.wait_for(lambda f: f.get("channel") == "job:d" and f["seq"] == 3)
    want = [(c, seq) for c in ("job:a", "job:d") for seq in (1, 2, 3)]
    assert sorted(keyed(ws, hubs)) == want


async def test_a_since_naming_a_shard_the_hub_lacks_is_an_error_reply(manager, hubs):
    ws, _ = await open_socket(manager, "bad")
    ws.sent.clear()
    ws.say({"type": "subscribe", "channels": ["job:a"], "since": {"5": 1}, "id": "x"})
    error = await ws.wait_for(lambda f: f["type"] == "error")
    assert error["data"]["code"] == "invalid_message"


async def test_a_socket_that_falls_behind_on_one_shard_catches_up_from_that_shard(manager, hubs):
    ws, task = await open_socket(manager, "behind")
    await subscribe(ws, "job:a", "job:d")
    gate = ws.gate = asyncio.Semaphore(0)  # the peer reads a frame per release
    a = hubs[1].emit("a", 3 * CONFIG.send_queue_size)
    d = hubs[0].emit("d", 3)
    for _ in range(len(a) + len(d)):
        gate.release()
        await asyncio.sleep(0)
    ws.gate = None
    for _ in range(len(a) + len(d)):
        gate.release()
    await ws.wait_for(lambda f: f.get("channel") == "job:a" and f["seq"] == a[-1])
    await ws.wait_for(lambda f: f.get("channel") == "job:d" and f["seq"] == d[-1])
    got = keyed(ws, hubs)
    assert [s for c, s in got if c == "job:a"] == a
    assert [s for c, s in got if c == "job:d"] == d
    assert manager.catch_ups >= 1 and not task.done()
