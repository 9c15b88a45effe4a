"""Nothing lost while connections break: many clients dropped again and again, and a
gateway replica that dies and comes back. Real Ray, real Serve, the real Python client."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from contextlib import aclosing
from typing import Any

import httpx
import pytest
import ray

import control_plane
import control_plane.websocket
from control_plane.client import ConnectionState, ControlPlaneClient
from tests.conftest import TOKEN
from tests.integration.rawclient import SHARD_SPAN, event_key, is_marker, markers, seq_on
from tests.integration.wsclient import TestSocket

pytestmark = pytest.mark.ray
logger = logging.getLogger(__name__)

TERMINAL = {"job.completed", "job.failed", "job.cancelled"}


async def hub_log(plane: Any, channels: list[str], job_ids: set[str]) -> list[int]:
    """The seqs the hub retains on ``channels`` for these jobs, from a fresh subscribe."""
    sock = await TestSocket.open(plane.ws_url, TOKEN)
    ack = await sock.subscribe(*channels, since=0)
    for mark in await markers():  # on every shard
        await sock.wait_for(
            lambda f, m=mark: f["type"] == "app.marker" and is_marker(f, [m]), timeout=60
        )
    await sock.close()
    assert ack["data"]["recovered"] is True
    return [
        event_key(f)
        for f in sock.events()
        if f["data"].get("job_id") in job_ids and f["type"] != "app.marker"
    ]


async def follow(
    client: ControlPlaneClient, channels: list[str], job_ids: set[str], ends: int
) -> list[dict[str, Any]]:
    """Collect this client's events of ``job_ids`` until ``ends`` terminal events came."""
    seen: list[dict[str, Any]] = []
    finished = 0
    async with aclosing(client.events(channels, since=0)) as stream:
        async for event in stream:
            assert event["type"] != "client.gap", event
            if event.get("seq") is None or event["data"].get("job_id") not in job_ids:
                continue
            seen.append(event)
            if event["type"] in TERMINAL:
                finished += 1
                if finished == ends:
                    return seen
    raise AssertionError("the stream ended early")


async def test_twenty_clients_dropped_again_and_again_see_the_whole_log(plane: Any) -> None:
    jobs = [
        control_plane.submit(
            "jobs.examples:emit_burst", count=1500, every=10, rate=250, job_name=f"chaos-{i}"
        )
        for i in range(3)
    ]
    ids = [j.job_id for j in jobs]
    plans: list[list[str]] = []
    for i in range(20):
        job_id = ids[i % 3]
        plans.append([f"job:{job_id}"] if i % 2 else [f"job:{job_id}", "jobs"])
    clients = [
        ControlPlaneClient(plane.ws_url, TOKEN, backoff_initial=0.01, backoff_max=0.2)
        for _ in plans
    ]
    await asyncio.gather(*(c.connect() for c in clients))

    def ends(plan: list[str]) -> int:
        return 3 if "jobs" in plan else 1

    followers = [
        asyncio.ensure_future(follow(c, plan, set(ids), ends(plan)))
        for c, plan in zip(clients, plans, strict=True)
    ]
    drops = 0
    rng = random.Random(7)
    started = time.monotonic()
    while not all(f.done() for f in followers) and time.monotonic() - started < 120:
        victim = rng.choice(clients)
        if victim.state is ConnectionState.CONNECTED:
            victim._drop_connection_for_tests()
            drops += 1
        await asyncio.sleep(rng.uniform(0.02, 0.1))
    streams = await asyncio.wait_for(asyncio.gather(*followers), 120)
    reconnects = sum(c.reconnects for c in clients)
    duplicates_dropped = sum(c.duplicates for c in clients)
    await asyncio.gather(*(c.close() for c in clients))
    logger.info(
        "%d drops, %d reconnects, %d duplicates dropped by the clients",
        drops,
        reconnects,
        duplicates_dropped,
    )
    assert drops >= 20 and reconnects >= 20

    logs: dict[tuple[str, ...], list[int]] = {}
    for plan, stream in zip(plans, streams, strict=True):
        key = tuple(plan)
        if key not in logs:
            wanted = set(ids) if "jobs" in plan else {plan[0].removeprefix("job:")}
            logs[key] = await hub_log(plane, plan, wanted)
        seqs = [event_key(e) for e in stream]  # the seq, or with shards (shard, seq) as one
        assert len(seqs) == len(set(seqs)), "a duplicate reached the user"
        last = {s // SHARD_SPAN: s for s in sorted(seqs)}  # the last read of each shard
        expected = sorted(s for s in logs[key] if s <= last.get(s // SHARD_SPAN, 0))
        assert sorted(seqs) == expected, f"gaps: {sorted(set(expected) - set(seqs))[:10]}"
    for job in jobs:
        assert ray.get(job.result) == 1500


async def test_a_client_whose_gateway_dies_reconnects_when_it_returns_and_loses_nothing(
    plane: Any,
) -> None:
    states: list[ConnectionState] = []
    job = control_plane.submit("jobs.examples:countdown", steps=300, delay=0.03)
    client = ControlPlaneClient(
        plane.ws_url, TOKEN, backoff_initial=0.05, backoff_max=1.0, on_state_change=states.append
    )
    await client.connect()
    stream = asyncio.ensure_future(follow(client, [f"job:{job.job_id}"], {job.job_id}, 1))
    async with asyncio.timeout(60):
        while seq_on(client.cursors.get(f"job:{job.job_id}", 0), job.job_id) == 0:
            await asyncio.sleep(0.05)
    [replica] = [
        a
        for a in ray.util.list_named_actors(all_namespaces=True)
        if "SERVE_REPLICA" in a["name"] and "gateway" in a["name"]
    ]
    ray.kill(ray.get_actor(replica["name"], namespace=replica["namespace"]), no_restart=True)
    events = await asyncio.wait_for(stream, 180)
    await client.close()
    assert ConnectionState.RECONNECTING in states
    assert states[-1] is ConnectionState.CLOSED
    seqs = [event_key(e) for e in events]
    assert seqs == await hub_log(plane, [f"job:{job.job_id}"], {job.job_id})
    assert [e["type"] for e in events].count("job.progress") == 300
    async with httpx.AsyncClient(base_url=plane.base_url) as http:
        assert (await http.get("/healthz")).status_code == 200
