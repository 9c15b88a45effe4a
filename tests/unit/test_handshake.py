"""The handshake deadline (``gateway/handshake.py``) on a real uvicorn and real sockets on
loopback, no Ray: a connection that opens TCP and never finishes its upgrade is dropped;
one that upgrades in time, and a plain HTTP request, are not."""

from __future__ import annotations

import asyncio

import websockets
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from control_plane.gateway.replica_server import ReplicaServer

DEADLINE = 0.5


async def echo(websocket: WebSocket) -> None:
    await websocket.accept()
    async for text in websocket.iter_text():
        await websocket.send_text(text)


async def stall(websocket: WebSocket) -> None:
    await asyncio.sleep(3600)  # never accepts


async def hello(request: object) -> PlainTextResponse:
    return PlainTextResponse("hi")


def server() -> ReplicaServer:
    app = Starlette(
        routes=[WebSocketRoute("/ws", echo), WebSocketRoute("/stall", stall), Route("/", hello)]
    )
    s = ReplicaServer(app, "127.0.0.1", 0, handshake_timeout=DEADLINE)
    s.start()
    return s


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    """True when the server closes the connection (EOF) within 20 deadlines."""
    async with asyncio.timeout(20 * DEADLINE):
        while await reader.read(4096):
            pass
    return True


async def test_a_connection_that_sends_nothing_is_dropped_after_the_deadline():
    s = server()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
        assert await closed_by_server(reader)
        writer.close()
    finally:
        await s.stop(timeout=2)


async def test_half_a_request_head_is_dropped_after_the_deadline():
    s = server()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
        writer.write(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")
        await writer.drain()
        assert await closed_by_server(reader)
        writer.close()
    finally:
        await s.stop(timeout=2)


async def test_an_upgrade_the_app_never_accepts_is_dropped_after_the_deadline():
    s = server()
    try:
        async with asyncio.timeout(20 * DEADLINE):
            try:
                async with websockets.connect(f"ws://127.0.0.1:{s.port}/stall", open_timeout=None):
                    raise AssertionError("the upgrade completed")
            except (websockets.exceptions.InvalidMessage, EOFError, ConnectionError, OSError):
                pass  # dropped before any response
    finally:
        await s.stop(timeout=2)


async def test_a_socket_that_upgraded_in_time_outlives_the_deadline_and_http_still_works():
    s = server()
    try:
        async with websockets.connect(f"ws://127.0.0.1:{s.port}/ws") as ws:
            await asyncio.sleep(3 * DEADLINE)
            await ws.send("still here")
            assert await ws.recv() == "still here"
        reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        response = await reader.read()
        assert response.startswith(b"HTTP/1.1 200") and response.endswith(b"hi")
        writer.close()
    finally:
        await s.stop(timeout=2)
