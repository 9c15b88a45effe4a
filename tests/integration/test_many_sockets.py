"""Many sockets on one gateway replica (issue 13): each gets each event of its job once, in
the hub's order, through the real Serve gateway, with plain ``websockets`` clients (lighter
than ``RawClient``, so that a thousand of them fit in the test's process). The 10,000-socket
figure is the benchmark's (``benchmarks/run.py``, fan-out at scale), not CI's."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import websockets

import control_plane
from tests.conftest import TOKEN
from tests.integration.rawclient import healthz

pytestmark = pytest.mark.ray

SOCKETS = 1000
STEPS = 5


async def _open(url: str, gate: asyncio.Semaphore) -> Any:
    async with gate:
        return await websockets.connect(
            url,
            additional_headers={"Authorization": f"Bearer {TOKEN}"},
            open_timeout=120,
            ping_interval=None,
            compression=None,
        )


async def _subscribe(ws: Any, channel: str, gate: asyncio.Semaphore) -> None:
    async with gate:
        await ws.send(json.dumps({"type": "subscribe", "channels": [channel], "id": "s"}))
        while True:
            frame = json.loads(await asyncio.wait_for(ws.recv(), 120))
            if frame["type"] in ("ack", "error") and frame["data"].get("request_id") == "s":
                assert frame["type"] == "ack", frame
                return


async def _events_until_completed(ws: Any, channel: str) -> list[tuple[int, str]]:
    """(seq, type) of every hub event on ``channel`` until ``job.completed``."""
    got: list[tuple[int, str]] = []
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), 120))
        if frame.get("channel") == channel and isinstance(frame.get("seq"), int):
            got.append((frame["seq"], frame["type"]))
            if frame["type"] == "job.completed":
                return got


@pytest.mark.timeout(300)
async def test_a_thousand_sockets_on_one_replica_each_get_each_event_once(plane: Any) -> None:
    job = await asyncio.to_thread(
        control_plane.submit,
        "jobs.examples:countdown",
        steps=STEPS,
        delay=0.05,
        job_options={"pause_timeout": 30},
    )
    assert (await asyncio.to_thread(job.pause)).state == "paused"
    channel = f"job:{job.job_id}"
    gate = asyncio.Semaphore(50)
    clients = await asyncio.gather(*(_open(plane.ws_url, gate) for _ in range(SOCKETS)))
    try:
        await asyncio.gather(*(_subscribe(ws, channel, gate) for ws in clients))
        assert (await healthz(plane))["connections"] >= SOCKETS
        readers = [asyncio.ensure_future(_events_until_completed(ws, channel)) for ws in clients]
        await asyncio.to_thread(job.resume)
        received = await asyncio.gather(*readers)
        first = received[0]
        seqs = [seq for seq, _ in first]
        assert seqs == sorted(set(seqs)), "out of order or repeated"
        assert [t for _, t in first].count("job.progress") == STEPS
        assert all(r == first for r in received), "sockets got different events"
    finally:
        await asyncio.gather(*(ws.close() for ws in clients), return_exceptions=True)
