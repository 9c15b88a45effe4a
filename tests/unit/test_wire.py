"""Frames written straight to uvicorn's transport, one shared frame for every socket, and no
task per idle socket: a real uvicorn (the gateway's ``ReplicaServer``), real ``websockets``
clients on loopback and the hub's real log; no Ray."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import websockets
from fastapi import FastAPI
from starlette.websockets import WebSocket
from websockets.frames import Frame, Opcode

from control_plane.core.protocol import CloseCode, make_event
from control_plane.gateway import wire
from control_plane.gateway.manager import WebSocketManager
from control_plane.gateway.replica_server import ReplicaServer
from control_plane.gateway.session import SocketConfig
from tests.unit.hubfake import LogHub


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65_535, 65_536, 70_000])
def test_a_text_frame_is_byte_for_byte_what_websockets_sends_for_it(size: int) -> None:
    text = "é" * (size // 2) + "x" * (size % 2)
    expected = Frame(Opcode.TEXT, text.encode()).serialize(mask=False, extensions=[])
    assert wire.text_frame(text) == expected


def test_a_socket_that_is_not_uvicorns_gets_no_direct_writes() -> None:
    class Other:
        async def send(self, message: dict[str, Any]) -> None:  # pragma: no cover
            raise AssertionError(message)

    class FakeWebSocket:
        _send = Other().send

    assert wire.server_protocol(FakeWebSocket()) is None
    assert wire.server_protocol(object()) is None


class Replica:
    """A manager over the hub's real log, served by the gateway's uvicorn on /ws."""

    def __init__(self, manager: WebSocketManager, hub: LogHub, server: ReplicaServer) -> None:
        self.manager, self.hub, self.server = manager, hub, server
        self.routed: list[str] = []  # what reached FastAPI

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.server.port}/ws"


@pytest.fixture
async def replica() -> AsyncIterator[Replica]:
    hub = LogHub()
    manager = WebSocketManager()
    manager.configure(SocketConfig(), hub)
    manager.start()
    app = FastAPI()

    async def serve(websocket: WebSocket) -> None:
        await manager.serve(websocket)

    server = ReplicaServer(app, "127.0.0.1", 0, sockets={"/ws": serve})
    r = Replica(manager, hub, server)

    @app.websocket("/other")
    async def other(websocket: WebSocket) -> None:
        r.routed.append("/other")
        await websocket.accept()
        await websocket.close(1000)

    server.start()
    try:
        yield r
    finally:
        await manager.close_all()
        await server.stop()


async def _client(url: str) -> Any:
    ws = await websockets.connect(url, compression=None, ping_interval=None)
    await ws.recv()  # welcome
    return ws


async def _subscribe(ws: Any, channel: str) -> None:
    await ws.send(json.dumps({"type": "subscribe", "channels": [channel], "id": "s"}))
    while json.loads(await ws.recv())["type"] != "ack":
        pass


async def test_many_sockets_get_each_event_once_with_no_task_of_their_own(replica):
    count, events = 200, 20
    base_tasks = len(asyncio.all_tasks())
    clients = await asyncio.gather(*(_client(replica.url) for _ in range(count)))
    try:
        await asyncio.gather(*(_subscribe(ws, "job:a") for ws in clients))
        # Per socket one task: uvicorn's handler (the read loop); no writer, no watchdog.
        assert len(asyncio.all_tasks()) - base_tasks <= count + 5
        assert all(s._writer is None for s in replica.manager.sessions.values())
        seqs = replica.hub.emit("a", events)
        for ws in clients:
            got = [json.loads(await asyncio.wait_for(ws.recv(), 10))["seq"] for _ in seqs]
            assert got == seqs
        assert replica.manager.stats()["delivered"] == count * events
    finally:
        await asyncio.gather(*(ws.close() for ws in clients))


async def test_a_client_that_stops_reading_gets_its_frames_in_order_once_it_reads_again(
    replica,
):
    """Its transport pauses, frames wait in its outbox, a writer task sends them as the
    peer reads: the order is the hub's, none is lost or doubled."""
    ws = await websockets.connect(
        replica.url, compression=None, ping_interval=None, max_queue=1, max_size=None
    )
    try:
        await ws.recv()  # welcome
        await _subscribe(ws, "job:a")
        session = next(iter(replica.manager.sessions.values()))
        ws.transport.pause_reading()
        big = "y" * 40_000
        seqs: list[int] = []
        for _ in range(400):  # 16 MB: past the kernel's buffers and the transport's mark
            entries = replica.hub.log.append(
                [make_event("job.progress", {"job_id": "a", "b": big})]
            )
            seqs += [e.seq for e in entries]
            await asyncio.sleep(0)
        await asyncio.sleep(0.5)
        assert session._writer is not None and len(session.outbox) > 0
        ws.transport.resume_reading()

        async def more() -> None:  # events that come while the outbox drains
            for _ in range(100):
                seqs.extend(replica.hub.emit("a"))
                await asyncio.sleep(0.002)

        emitting = asyncio.ensure_future(more())
        total = len(seqs) + 100
        got = [json.loads(await asyncio.wait_for(ws.recv(), 10))["seq"] for _ in range(total)]
        await emitting
        assert got == seqs
        for _ in range(100):
            if session._writer is None:
                break
            await asyncio.sleep(0.05)
        assert session._writer is None and len(session.outbox) == 0
    finally:
        await ws.close()


async def test_other_paths_still_go_to_the_app(replica):
    async with websockets.connect(replica.url.replace("/ws", "/other")) as ws:
        with pytest.raises(websockets.ConnectionClosedOK):
            await ws.recv()
    assert replica.routed == ["/other"]


async def test_a_socket_closed_by_the_server_ends_its_read_loop_and_is_forgotten(replica):
    ws = await _client(replica.url)
    try:
        session = next(iter(replica.manager.sessions.values()))
        await replica.manager.disconnect(session.client_id, CloseCode.SLOW_CONSUMER, "slow")
        with pytest.raises(websockets.ConnectionClosed):
            while True:
                await asyncio.wait_for(ws.recv(), 10)
        assert ws.close_code == CloseCode.SLOW_CONSUMER
        for _ in range(100):
            if replica.manager.closes[CloseCode.SLOW_CONSUMER]:
                break
            await asyncio.sleep(0.05)
        assert replica.manager.closes[CloseCode.SLOW_CONSUMER] == 1
        assert not replica.manager.sessions
    finally:
        await ws.close()
