"""The hub's two readers, the controller's feed and the gateway replica's, on the real hub
actor: an error of a kind they have never seen is logged and retried, and nothing is lost
or repeated (counted on a raw socket)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
import websockets

import control_plane
from control_plane.actors import hub_shards, runtime
from tests.conftest import TOKEN

pytestmark = pytest.mark.ray

AUTH = {"Authorization": f"Bearer {TOKEN}"}
INJECTED = "injected: a hub error no reader expects"


def _state(job_id: str) -> str:
    return next(s.state.value for s in control_plane.list_jobs() if s.job_id == job_id)


async def test_the_controllers_feed_survives_a_hub_error_it_has_never_seen(plane: Any) -> None:
    controller = runtime.controller()
    before = await controller.feed_stats.remote()
    hubs = hub_shards.handles()  # the job lands on one of them: inject into each
    await asyncio.gather(*(h.fail_listens.remote("controller-", 3, INJECTED) for h in hubs))
    job = control_plane.submit("jobs.examples:countdown", steps=20, delay=0.02)
    assert await asyncio.wait_for(asyncio.wrap_future(job.result.future()), 60) == {"steps": 20}
    # The registry is fed only by the hub: it sees the job complete once the feed resumed.
    deadline = time.monotonic() + 30
    while _state(job.job_id) != "completed":
        assert time.monotonic() < deadline, f"registry stuck at {_state(job.job_id)}"
        await asyncio.sleep(0.1)
    after = await controller.feed_stats.remote()
    # The job's shard raises 3 times; another shard only if its reader listened meanwhile.
    assert 3 <= after["errors"] - before["errors"] <= 3 * len(hubs)
    assert after["state"] == "running" and after["received"] > before["received"]


async def test_the_gateways_reader_survives_a_hub_error_and_a_socket_gets_each_event_once(
    plane: Any,
) -> None:
    async with websockets.connect(plane.ws_url, additional_headers=AUTH) as ws:
        job = control_plane.submit(
            "jobs.examples:countdown", steps=200, delay=0.01, job_options={"pause_timeout": 30}
        )
        assert job.pause().state == "paused"
        await ws.send(json.dumps({"type": "subscribe", "channels": [f"job:{job.job_id}"]}))
        channel = f"job:{job.job_id}"
        await hub_shards.hub_for(channel).fail_listens.remote("gateway-", 3, INJECTED)
        job.resume()
        seqs: list[int] = []
        async with asyncio.timeout(120):
            while True:
                frame = json.loads(await ws.recv())
                if "seq" in frame:
                    seqs.append(frame["seq"])
                if frame["type"] == "job.completed":
                    break
    log = await hub_shards.hub_for(f"job:{job.job_id}").replay.remote(0, [f"job:{job.job_id}"])
    expected = [e.seq for e in log["entries"]]
    resumed_from = next(i for i, seq in enumerate(expected) if seq >= seqs[0])
    assert seqs == expected[resumed_from:], "a gap or a duplicate on the wire"
    assert len(seqs) >= 200  # every progress after the resume, and the end
    health = await asyncio.to_thread(_healthz, plane.base_url)
    readers = health.get("readers") or [health["reader"]]  # one per hub shard
    assert sum(r["errors"] for r in readers) >= 3
    assert all(r["state"] == "running" for r in readers)


def _healthz(base_url: str) -> dict[str, Any]:
    import urllib.request

    with urllib.request.urlopen(f"{base_url}/healthz", timeout=10) as response:
        body: dict[str, Any] = json.loads(response.read())
        return body
