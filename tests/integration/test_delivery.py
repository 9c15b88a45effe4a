"""Delivery on the real gateway: resume limits, snapshots, heartbeats, slow consumers,
idempotent commands."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
import ray

import control_plane
import control_plane.websocket
from control_plane.actors import hub_shards
from tests.conftest import HISTORY, TOKEN
from tests.integration.rawclient import is_marker, markers, seq_on, since_on
from tests.integration.wsclient import TestSocket

pytestmark = pytest.mark.ray
logger = logging.getLogger(__name__)
AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def test_since_older_than_the_retained_history_is_not_recovered(plane: Any) -> None:
    job = control_plane.submit("jobs.examples:emit_burst", count=HISTORY + 5_000, every=1000)
    assert ray.get(job.result, timeout=120) == HISTORY + 5_000
    sock = await TestSocket.open(plane.ws_url, TOKEN)
    ack = await sock.subscribe(f"job:{job.job_id}", since=1)
    assert ack["data"]["recovered"] is False
    assert seq_on(ack["data"]["oldest"], job.job_id) > 2
    shards = len(await asyncio.to_thread(hub_shards.handles))  # each keeps HISTORY events
    assert 0 < ack["data"]["replayed"] <= HISTORY * shards
    # a current cursor from another epoch is not trusted either
    head = ack["data"]["seq"]
    reply = await sock.request(
        {"type": "subscribe", "channels": ["system"], "since": head, "epoch": "an-old-epoch"}
    )
    assert reply["data"]["recovered"] is False
    reply = await sock.request(
        {"type": "subscribe", "channels": ["system"], "since": head, "epoch": ack["data"]["epoch"]}
    )
    assert reply["data"]["recovered"] is True
    await sock.close()


async def test_subscribing_to_a_job_first_sends_its_snapshot(plane: Any) -> None:
    job = control_plane.submit("jobs.examples:agents_pipeline", delay=0.02)
    ray.get(job.result, timeout=60)
    sock = await TestSocket.open(plane.ws_url, TOKEN)
    await sock.subscribe(f"job:{job.job_id}")
    first = next(f for f in sock.frames if f["type"] not in ("welcome", "ping"))
    assert first["type"] == "job.snapshot"
    snap = first["data"]
    assert first["channel"] == f"job:{job.job_id}"
    assert snap["job_id"] == job.job_id and snap["status"] == "completed"
    assert snap["progress"] == 100.0
    assert {a["name"] for a in snap["agents"]} >= {"planner", "writer"}
    assert any("summary" in o["output"] for o in snap["recent_outputs"])
    assert snap["seq"] > 0
    paused = control_plane.submit("jobs.examples:countdown", steps=500, delay=0.01)
    assert paused.pause().state == "paused"
    await sock.subscribe(f"job:{paused.job_id}")
    snap2 = await sock.wait_for(
        lambda f: f["type"] == "job.snapshot" and f["data"]["job_id"] == paused.job_id
    )
    assert snap2["data"]["status"] == "paused"
    assert snap2["data"]["progress"] == paused.status().progress
    paused.cancel()
    await sock.close()


async def test_the_same_request_id_twice_is_applied_once_and_acknowledged_twice(
    plane: Any,
) -> None:
    job = control_plane.submit("jobs.examples:countdown", steps=1000, delay=0.01)
    sock = await TestSocket.open(plane.ws_url, TOKEN)
    await sock.subscribe(f"job:{job.job_id}")
    pause = {"type": "job.pause", "job_id": job.job_id, "id": "pause-once"}
    await sock.send(pause)
    first = await sock.wait_for(lambda f: f["data"].get("request_id") == "pause-once")
    assert first["data"]["status"]["state"] == "paused"
    resumed = await sock.request({"type": "job.resume", "job_id": job.job_id})
    assert resumed["data"]["status"]["state"] == "running"
    await sock.wait_type("job.resumed", job.job_id)
    count = len(sock.frames)
    await sock.send(pause)  # a retry of the first pause, e.g. after a reconnect
    again = await sock.wait_for(
        lambda f: f["data"].get("request_id") == "pause-once" and sock.frames.index(f) >= count
    )
    assert again["type"] == "ack"
    assert again["data"]["status"] == first["data"]["status"]
    assert job.status().state == "running"
    for mark in await markers():  # everything before them has arrived, on every shard
        await sock.wait_for(lambda f, m=mark: f["type"] == "app.marker" and is_marker(f, [m]))
    assert [f["type"] for f in sock.events(job.job_id)].count("job.paused") == 1
    job.cancel()
    await sock.close()


async def test_a_socket_that_never_subscribes_is_closed_after_the_deadline(plane: Any) -> None:
    sock = await TestSocket.open(plane.ws_url, TOKEN)  # it answers pings
    code, reason = await asyncio.wait_for(sock.closed, 60)
    assert code == 4001, reason


async def test_sockets_that_subscribe_while_the_gateway_streams_another_job_miss_nothing(
    plane: Any,
) -> None:
    """The hub sends the replica only its sockets' channels. Each new socket here adds a
    channel to that filter while the replica's listen is busy with another job's stream;
    from its ack on it must get every event of its job, with no gap."""
    busy = control_plane.submit("jobs.examples:emit_burst", count=6000, every=50, rate=2000)
    watched = control_plane.submit("jobs.examples:emit_burst", count=3000, every=20, rate=1000)
    holder = await TestSocket.open(plane.ws_url, TOKEN)
    await holder.subscribe(f"job:{busy.job_id}")
    await holder.wait_type("job.progress", busy.job_id)
    rounds: list[tuple[int, list[int]]] = []
    for _ in range(8):
        sock = await TestSocket.open(plane.ws_url, TOKEN)
        ack = await sock.subscribe(f"job:{watched.job_id}")
        await asyncio.sleep(0.15)
        await sock.close()
        got = [f["seq"] for f in sock.events(watched.job_id) if f["type"] == "job.progress"]
        rounds.append((seq_on(ack["data"]["seq"], watched.job_id), got))
    assert ray.get([busy.result, watched.result], timeout=120) == [6000, 3000]
    truth_sock = await TestSocket.open(plane.ws_url, TOKEN)
    first_ack = min(s for s, _ in rounds)
    since = await since_on(first_ack, watched.job_id)  # on the job's shard
    reply = await truth_sock.subscribe(f"job:{watched.job_id}", since=since)
    assert reply["data"]["recovered"] is True
    await truth_sock.wait_type("job.completed", watched.job_id)
    truth = [f["seq"] for f in truth_sock.events(watched.job_id) if f["type"] == "job.progress"]
    await truth_sock.close()
    await holder.close()
    assert sum(len(got) for _, got in rounds) > 0
    for acked, got in rounds:
        if got:
            expected = [s for s in truth if acked < s <= got[-1]]
            assert got == expected, f"a gap after ack seq {acked}"


async def test_the_hub_does_not_send_the_gateway_a_job_no_socket_watches(plane: Any) -> None:
    """Reader filters: a busy job that no socket subscribes to costs the replica nothing,
    while a watched one still arrives whole."""
    import httpx

    async with httpx.AsyncClient(base_url=plane.base_url) as http:
        before = (await http.get("/healthz")).json()["received"]
        unwatched = control_plane.submit("jobs.examples:emit_burst", count=5000, every=500)
        assert ray.get(unwatched.result, timeout=120) == 5000
        after = (await http.get("/healthz")).json()["received"]
    # Only its lifecycle events may reach sockets (on "jobs", if one still listens there).
    assert after - before < 100, f"the replica was sent {after - before} entries"
    sock = await TestSocket.open(plane.ws_url, TOKEN)
    # Paced, so that the live stream never outgrows the tests' small send queue.
    watched = control_plane.submit("jobs.examples:emit_burst", count=2000, every=100, rate=2000)
    await sock.subscribe(f"job:{watched.job_id}", since=0)
    await sock.wait_type("job.completed", watched.job_id, timeout=120)
    progress = [f for f in sock.events(watched.job_id) if f["type"] == "job.progress"]
    assert len(progress) == 2000
    await sock.close()
