"""The hub's control lane (no Ray): control calls go ahead of queued bulk publishes, and no
order that matters changes."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from control_plane.actors.hub import EventHub
from control_plane.core.encoding import Encoded, encode_event
from control_plane.core.event_store import NullStore
from control_plane.core.lanes import BulkLane, is_control, publish_lane
from control_plane.core.loop_thread import LoopThread


def event(event_type: str, job: str = "j", **data: Any) -> Encoded:
    return encode_event(
        {
            "type": event_type,
            "timestamp": "2026-01-01T00:00:00.000Z",
            "data": {"job_id": job, "status": "running", **data},
        }
    )


def test_lifecycle_batches_are_control_and_progress_and_the_rest_bulk() -> None:
    assert is_control(["job.paused"])
    assert is_control(["job.progress", "job.progress", "job.completed"])
    assert not is_control(["job.progress", "agent.output", "bench.tick", "system.metrics"])
    assert not is_control([])


def test_publish_lane_picks_the_method_by_the_batch() -> None:
    class Handle:
        publish_control = "control"
        publish_encoded = "bulk"

    assert publish_lane(Handle(), [event("job.progress"), event("job.resumed")]) == "control"
    assert publish_lane(Handle(), [event("job.progress")]) == "bulk"


async def test_bulk_turns_keep_arrival_order_one_at_a_time() -> None:
    lane = BulkLane()
    order: list[int] = []
    holding = 0

    async def bulk(i: int) -> None:
        nonlocal holding
        async with lane.turn():
            holding += 1
            assert holding == 1
            order.append(i)
            holding -= 1

    await asyncio.gather(*(bulk(i) for i in range(20)))
    assert order == list(range(20))
    assert lane.turns == 20 and lane.waiting == 0


async def test_a_call_that_comes_during_a_turn_runs_before_the_next_turn() -> None:
    """Three bulk calls queued; a control call arrives while the first holds its turn: it
    runs before the second, not after the third (as it would on a plain FIFO loop)."""
    lane = BulkLane()
    seen: list[str] = []

    async def control() -> None:
        seen.append("control")

    async def bulk(name: str) -> None:
        async with lane.turn():
            seen.append(name)
            if name == "b1":
                asyncio.get_running_loop().create_task(control())  # arrives mid-turn

    await asyncio.gather(bulk("b1"), bulk("b2"), bulk("b3"))
    await asyncio.sleep(0)
    assert seen == ["b1", "control", "b2", "b3"]


async def test_a_waiter_cancelled_before_its_turn_does_not_stall_the_lane() -> None:
    lane = BulkLane()
    gate = asyncio.Event()
    done: list[str] = []

    async def bulk(name: str, hold: bool = False) -> None:
        async with lane.turn():
            if hold:
                await gate.wait()
            done.append(name)

    first = asyncio.create_task(bulk("first", hold=True))
    await asyncio.sleep(0.01)
    second = asyncio.create_task(bulk("second"))
    third = asyncio.create_task(bulk("third"))
    await asyncio.sleep(0.01)
    second.cancel()
    gate.set()
    await asyncio.gather(first, third)
    with pytest.raises(asyncio.CancelledError):
        await second
    assert done == ["first", "third"]


async def test_a_loop_thread_runs_coroutines_on_its_own_loop() -> None:
    thread = LoopThread("test-loop")
    try:

        async def where() -> asyncio.AbstractEventLoop:
            return asyncio.get_running_loop()

        assert await thread.run(where()) is thread.loop
        assert thread.loop is not asyncio.get_running_loop()

        started = asyncio.Event()

        async def forever() -> None:
            thread.loop.call_soon_threadsafe(lambda: None)
            started.set()
            await asyncio.sleep(3600)

        waiting = asyncio.create_task(thread.run(forever()))
        await asyncio.sleep(0.05)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
    finally:
        thread.stop()


def progress_of(hub: EventHub) -> list[tuple[str, Any]]:
    entries = hub._log.read(0)
    return [(json.loads(e.frame)["type"], json.loads(e.frame)["data"].get("i")) for e in entries]


async def test_the_hub_appends_a_lifecycle_batch_ahead_of_queued_bulk_batches() -> None:
    """Bulk batches of four publishers arrive together, then a job.paused of another: it is
    appended before all but (at most) the first. On a plain FIFO loop it came last."""
    hub = EventHub(store=NullStore())

    async def arrivals() -> None:  # on the log's loop, so that the order of arrival is known
        bulk = [
            asyncio.ensure_future(
                hub.publish_encoded(
                    [event("job.progress", f"load{p}", i=i) for i in range(50)], "", f"p{p}", 0
                )
            )
            for p in range(4)
        ]
        await asyncio.sleep(0)  # the four have come in
        paused = asyncio.ensure_future(
            hub.publish_control([event("job.paused", "idle")], "", "q", 0)
        )
        await asyncio.gather(*bulk, paused)

    await hub._log_loop.run(arrivals())
    types = [t for t, _ in progress_of(hub)]
    assert len(types) == 201
    assert types.index("job.paused") <= 50, types.index("job.paused")


async def test_a_publishers_numbered_batches_stay_in_order_across_the_two_lanes() -> None:
    """A job's progress (bulk) then its job.paused (control): the control batch waits for
    the bulk one before it, whatever lane each came by."""
    hub = EventHub(store=NullStore())
    first = asyncio.ensure_future(
        hub.publish_encoded([event("job.progress", i=i) for i in range(100)], "", "job", 0)
    )
    second = asyncio.ensure_future(hub.publish_control([event("job.paused", i=100)], "", "job", 1))
    await asyncio.gather(first, second)
    assert [i for _, i in progress_of(hub)] == list(range(101))
