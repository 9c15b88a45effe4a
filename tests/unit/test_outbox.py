"""The send queue: a bound for live events, room for replies, replays that wait (no sockets)."""

from __future__ import annotations

import asyncio

import pytest

from control_plane.core.outbox import Outbox


async def test_live_frames_are_refused_once_the_limit_is_reached() -> None:
    box = Outbox(2)
    assert box.push("a") and box.push("b")
    assert not box.push("c")
    assert len(box) == 2


async def test_replies_may_go_past_the_limit_up_to_twice_it() -> None:
    box = Outbox(2)
    box.push("a")
    box.push("b")
    assert box.push("ack1", reply=True) and box.push("ack2", reply=True)
    assert not box.push("ack3", reply=True)


async def test_frames_come_out_in_the_order_they_went_in() -> None:
    box = Outbox(10)
    for frame in "abc":
        box.push(frame)
    assert [await box.get() for _ in range(3)] == ["a", "b", "c"]


async def test_a_replay_put_waits_for_room_and_goes_on_when_the_writer_takes_a_frame() -> None:
    box = Outbox(1)
    box.push("live")
    put = asyncio.ensure_future(box.put("replayed"))
    await asyncio.sleep(0.01)
    assert not put.done()
    assert await box.get() == "live"
    assert await asyncio.wait_for(put, 1) is True
    assert await box.get() == "replayed"


async def test_get_waits_for_a_frame() -> None:
    box = Outbox(4)
    got = asyncio.ensure_future(box.get())
    await asyncio.sleep(0.01)
    assert not got.done()
    box.push("x")
    assert await asyncio.wait_for(got, 1) == "x"


async def test_close_lets_the_writer_finish_the_queue_then_says_none() -> None:
    box = Outbox(4)
    box.push("a")
    box.close()
    assert not box.push("b")
    assert await box.get() == "a"
    assert await box.get() is None


async def test_close_with_discard_drops_the_queue_and_frees_waiting_puts() -> None:
    box = Outbox(1)
    box.push("a")
    put = asyncio.ensure_future(box.put("b"))
    await asyncio.sleep(0.01)
    box.close(discard=True)
    assert await asyncio.wait_for(put, 1) is False
    assert await box.get() is None


def test_an_outbox_needs_room_for_one_frame() -> None:
    with pytest.raises(ValueError):
        Outbox(0)
