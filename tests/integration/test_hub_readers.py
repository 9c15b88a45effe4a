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
from control_plane.actors import runtime
from tests.conftest import TOKEN

pytestmark = pytest.mark.ray

AUTH = {"Authorization": f"Bearer {TOKEN}"}
INJECTED = "injected: a hub error no reader expects"


def _state(job_id: str) -> str:
    return next(s.state.value for s in control_plane.list_jobs() if s.job_id == job_id)


async def test_the_controllers_feed_survives_a_hub_error_it_has_never_seen(plane: Any) -> None:
    controller = runtime.controller()
    before = await controller.feed_stats.remote()
    await runtime.hub().fail_listens.remote("controller-", 3, INJECTED)
    job = control_plane.submit("jobs.examples:countdown", steps=20, delay=0.02)
    assert await asyncio.wait_for(asyncio.wrap_future(job.result.future()), 60) == {"steps": 20}
    # The registry is fed only by the hub: it sees the job complete once the feed resumed.
    deadline = time.monotonic() + 30
    while _state(job.job_id) != "completed":
        assert time.monotonic() < deadline, f"registry stuck at {_state(job.job_id)}"
        await asyncio.sleep(0.1)
    after = await controller.feed_stats.remote()
    assert after["errors"] - before["errors"] == 3
    assert after["state"] == "running" and after["cursor"] > before["cursor"]


async def test_the_gateways_reader_survives_a_hub_error_and_a_socket_gets_each_event_once(
    plane: Any,
) -> None:
    async with websockets.connect(plane.ws_url, additional_headers=AUTH) as ws:
        job = control_plane.submit(
            "jobs.examples:countdown", steps=200, delay=0.01, job_options={"pause_timeout": 30}
        )
        assert job.pause().state == "paused"
        await ws.send(json.dumps({"type": "subscribe", "channels": [f"job:{job.job_id}"]}))
        await runtime.hub().fail_listens.remote("gateway-", 3, INJECTED)
        job.resume()
        seqs: list[int] = []
        async with asyncio.timeout(120):
            while True:
                frame = json.loads(await ws.recv())
                if "seq" in frame:
                    seqs.append(frame["seq"])
                if frame["type"] == "job.completed":
                    break
    log = await runtime.hub().replay.remote(0, [f"job:{job.job_id}"])
    expected = [e.seq for e in log["entries"]]
    resumed_from = next(i for i, seq in enumerate(expected) if seq >= seqs[0])
    assert seqs == expected[resumed_from:], "a gap or a duplicate on the wire"
    assert len(seqs) >= 200  # every progress after the resume, and the end
    health = await asyncio.to_thread(_healthz, plane.base_url)
    assert health["reader"]["errors"] >= 3 and health["reader"]["state"] == "running"


def _healthz(base_url: str) -> dict[str, Any]:
    import urllib.request

    with urllib.request.urlopen(f"{base_url}/healthz", timeout=10) as response:
        body: dict[str, Any] = json.loads(response.read())
        return body
