"""The gateway replica's listening socket: a taken port is named at once (no Ray)."""

from __future__ import annotations

import socket
import threading

import pytest

from control_plane.gateway.replica_server import bind, check_free


def taken_port() -> tuple[socket.socket, int]:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    return holder, holder.getsockname()[1]


def test_a_taken_port_is_refused_with_its_address():
    holder, port = taken_port()
    with holder, pytest.raises(OSError, match=f"127.0.0.1:{port}"):
        check_free("127.0.0.1", port)


def test_a_free_port_is_listened_on():
    holder, port = taken_port()
    holder.close()
    sock = bind("127.0.0.1", port, patience=0)
    with sock:
        assert sock.getsockname()[1] == port
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass


def test_bind_waits_for_a_port_that_is_being_given_up():
    holder, port = taken_port()
    threading.Timer(0.3, holder.close).start()
    with bind("127.0.0.1", port, patience=30.0) as sock:
        assert sock.getsockname()[1] == port


async def test_the_replica_server_makes_a_send_wait_for_a_client_that_does_not_read() -> None:
    """The writer's flow control is the transport's: uvicorn's websockets-sansio waits while
    the peer's TCP window is shut (uvicorn >= 0.52.1; before, sends never waited and a
    client that read nothing grew the server's buffer without bound). A real uvicorn and a
    real socket on loopback, no Ray."""
    import asyncio

    import websockets
    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute
    from starlette.websockets import WebSocket

    from control_plane.gateway.replica_server import ReplicaServer

    frame, total = "x" * 1024, 200_000  # 200 MB if every send went through
    sent = 0

    async def push(websocket: WebSocket) -> None:
        nonlocal sent
        await websocket.accept()
        for _ in range(total):
            await websocket.send_text(frame)
            sent += 1

    server = ReplicaServer(Starlette(routes=[WebSocketRoute("/", push)]), "127.0.0.1", 0)
    server.start()
    try:
        url = f"ws://127.0.0.1:{server.port}/"
        async with websockets.connect(url, max_queue=1, close_timeout=0.1) as ws:
            await ws.recv()  # from here on the client reads nothing
            stalled_at, seen = 0, -1
            async with asyncio.timeout(60):
                while stalled_at < 5:  # half a second with no send going through
                    await asyncio.sleep(0.1)
                    stalled_at, seen = (stalled_at + 1, sent) if sent == seen else (0, sent)
            assert sent < total // 4, f"{sent} sends of 1 KiB went through to a closed window"
    finally:
        await server.stop(timeout=2)
