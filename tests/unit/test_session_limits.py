"""A socket's limits over the fake socket of ``test_session`` and the hub's real log (no
Ray, no network): each refused request gets an ``error`` with its own code and the socket
carries on; sockets over the connection limits are closed with 4029 after an ``error``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from control_plane.core.hub_log import EventLog
from control_plane.core.principals import SHARED_ADMIN, Principal, Role
from control_plane.core.protocol import CloseCode
from control_plane.gateway.manager import WebSocketManager
from control_plane.gateway.session import SocketConfig
from tests.unit.hubfake import LogHub
from tests.unit.test_session import FakeSocket

LIMITS = SocketConfig(
    send_queue_size=64,
    max_lag=2.0,
    subscribe_deadline=5.0,
    close_timeout=0.3,
    max_frame_bytes=256 * 1024,
    max_subscriptions=3,
    max_subscribes_in_flight=2,
    requests_per_second=1.0,
    request_burst=5,
    max_connections=3,
    max_connections_per_principal=2,
)


@pytest.fixture
async def hub() -> LogHub:
    return LogHub(EventLog(capacity=10_000, epoch="e"))


async def make_manager(hub: LogHub, config: SocketConfig = LIMITS, **kw: Any) -> WebSocketManager:
    m = WebSocketManager()
    m.configure(config, hub, **kw)
    m.start()
    return m


@pytest.fixture
async def manager(hub: LogHub) -> AsyncIterator[WebSocketManager]:
    m = await make_manager(hub)
    yield m
    await m.close_all()


async def open_socket(
    manager: WebSocketManager, client_id: str, principal: str = ""
) -> tuple[FakeSocket, asyncio.Future[None]]:
    ws = FakeSocket()
    # A signed token's principal (one that expires) is counted per subject.
    who = (
        Principal.make(principal, Role.VIEWER, expires_at=time.time() + 600)
        if principal
        else SHARED_ADMIN
    )
    task = asyncio.ensure_future(manager.serve(ws, client_id, who))  # type: ignore[arg-type]
    await ws.wait_for(lambda f: f["type"] in ("welcome", "error"))
    return ws, task


def replies(ws: FakeSocket, kind: str) -> list[dict[str, Any]]:
    return [f for f in ws.sent if f["type"] == kind]


async def test_a_deeply_nested_frame_gets_an_error_and_the_socket_carries_on(manager):
    ws, task = await open_socket(manager, "deep")
    ws.say("[" * 40_000)
    error = await ws.wait_for(lambda f: f["type"] == "error")
    assert error["data"]["code"] == "too_deep"
    ws.say({"type": "ping", "id": 1})
    await ws.wait_for(lambda f: f["type"] == "pong")
    assert ws.closed is None and not task.done()


async def test_requests_over_the_rate_get_rate_limited_errors_and_the_socket_stays(manager):
    ws, task = await open_socket(manager, "fast")
    for i in range(8):
        ws.say({"type": "ping", "id": i})
    await ws.wait_for(lambda f: len(replies(ws, "pong")) + len(replies(ws, "error")) == 8)
    assert [f["data"]["request_id"] for f in replies(ws, "pong")] == [0, 1, 2, 3, 4]
    errors = replies(ws, "error")
    assert [e["data"]["code"] for e in errors] == ["rate_limited"] * 3
    assert [e["data"]["request_id"] for e in errors] == [5, 6, 7]
    assert "1 requests a second" in errors[0]["data"]["message"]
    assert ws.closed is None and not task.done()


async def test_subscriptions_over_the_limit_are_refused_with_too_many_subscriptions(manager):
    ws, _ = await open_socket(manager, "subs")
    ws.say({"type": "subscribe", "channels": ["job:a", "job:b"], "id": "s1"})
    await ws.wait_for(lambda f: f["type"] == "ack")
    ws.say({"type": "subscribe", "channels": ["job:a", "job:c"], "id": "s2"})  # 3: fine
    await ws.wait_for(lambda f: f["type"] == "ack" and f["data"]["request_id"] == "s2")
    ws.say({"type": "subscribe", "channels": ["job:d"], "id": "s3"})
    error = await ws.wait_for(lambda f: f["type"] == "error")
    assert error["data"]["request_id"] == "s3"
    assert error["data"]["code"] == "too_many_subscriptions"
    assert manager.index.channels_of("subs") == {"job:a", "job:b", "job:c"}


async def test_subscribes_in_flight_over_the_limit_get_too_many_requests(hub):
    held = asyncio.Event()

    async def slow_snapshot(job_id: str) -> None:
        await held.wait()

    config = SocketConfig(**{**LIMITS.__dict__, "max_subscriptions": 100})
    manager = await make_manager(hub, config, snapshots=slow_snapshot)
    try:
        ws, _ = await open_socket(manager, "replaying")
        for i in range(3):
            ws.say({"type": "subscribe", "channels": [f"job:{i}"], "id": i})
        error = await ws.wait_for(lambda f: f["type"] == "error")
        assert error["data"] == {
            "request_id": 2,
            "code": "too_many_requests",
            "message": "2 subscribes are in flight, at most 2: wait for their acks",
        }
        held.set()
        await ws.wait_for(lambda f: len(replies(ws, "ack")) == 2)
        ws.say({"type": "subscribe", "channels": ["job:2"], "id": 3})  # room again
        await ws.wait_for(lambda f: f["type"] == "ack" and f["data"]["request_id"] == 3)
    finally:
        await manager.close_all()


async def test_sockets_over_the_replica_limit_are_closed_with_4029_after_an_error(manager):
    for i in range(3):
        await open_socket(manager, f"c{i}")
    ws, task = await open_socket(manager, "c3")
    await asyncio.wait_for(task, 5)
    assert replies(ws, "error")[0]["data"]["code"] == "too_many_connections"
    assert ws.closed is not None and ws.closed[0] == CloseCode.TOO_MANY_CONNECTIONS == 4029
    assert "c3" not in manager.sessions and len(manager.sessions) == 3
    # a socket that replaces one of its own client id counts once
    again, task = await open_socket(manager, "c1")
    assert replies(again, "welcome") and not task.done()


async def test_sockets_over_the_principal_limit_are_closed_and_others_still_connect(manager):
    await open_socket(manager, "a1", "alice")
    await open_socket(manager, "a2", "alice")
    ws, task = await open_socket(manager, "a3", "alice")
    await asyncio.wait_for(task, 5)
    assert ws.closed is not None and ws.closed[0] == 4029
    assert "'alice' has 2 sockets" in replies(ws, "error")[0]["data"]["message"]
    bob, task = await open_socket(manager, "b1", "bob")
    assert replies(bob, "welcome") and not task.done()
    await manager.disconnect("a1")  # alice's count goes down when one of hers goes
    ws, task = await open_socket(manager, "a4", "alice")
    assert replies(ws, "welcome") and not task.done()


async def test_a_close_reason_that_is_too_long_is_cut_to_123_bytes(manager):
    ws, task = await open_socket(manager, "reason")
    await manager.disconnect("reason", 4000, "é" * 300)
    await asyncio.wait_for(task, 5)
    assert ws.closed is not None and ws.closed[0] == 4000
    assert len(ws.closed[1].encode()) <= 123 and ws.closed[1] == "é" * 61


async def test_a_subscribe_is_in_flight_until_its_ack_not_while_its_replay_drains(manager, hub):
    ws, _ = await open_socket(manager, "draining")
    seqs = hub.emit("a", 300)  # more than the send queue takes at once
    ws.reading.clear()  # the replay waits for room after the ack
    ws.say({"type": "subscribe", "channels": ["job:a"], "since": 0, "id": "s"})
    session = manager.sessions["draining"]
    async with asyncio.timeout(5):
        while not manager.index.channels_of("draining") or session.subscribing:
            await asyncio.sleep(0.01)
    assert len(ws.events()) < len(seqs)  # acknowledged, its replay still on its way
    ws.reading.set()
    await ws.wait_for(lambda f: f.get("seq") == seqs[-1])
    assert [f["seq"] for f in ws.events()] == seqs
