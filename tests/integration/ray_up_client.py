"""A Python client of the control plane that ``ray up deploy/local-cluster.yaml`` started
(``tests/integration/test_ray_up.py`` runs it in its own process, attached to that cluster):
a job to completion, another paused and resumed over the gateway's socket.

    RAY_ADDRESS=127.0.0.1:6379 RAY_AUTH_MODE=token python -m tests.integration.ray_up_client
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import ray

import control_plane
from control_plane.actors import gateway_directory
from control_plane.gateway import auth
from tests.integration.rawclient import RawClient


async def main() -> None:
    started = time.monotonic()
    ray.init(address="auto", namespace="control_plane")
    gateways = gateway_directory.listed()
    assert gateways, "the cluster announces no gateway"
    gateway = gateways[0]
    print(f"gateway at {gateway.base_url()} on node {gateway.node_ip}", flush=True)
    token = auth.find_token()
    assert token, "no control-plane token on this machine"

    job = control_plane.submit("jobs.examples:countdown", steps=20, delay=0.01)
    result = await asyncio.to_thread(ray.get, job.result, timeout=120)
    assert result == {"steps": 20}, result
    first_job = time.monotonic() - started
    print(f"first job done in {first_job:.1f} s: {json.dumps(result)}", flush=True)

    client = RawClient(gateway.base_url().replace("http", "ws", 1) + "/ws", token)
    await client.connect()
    long = control_plane.submit("jobs.examples:countdown", steps=2000, delay=0.01)
    await client.acked(await client.subscribe([f"job:{long.job_id}"], since=0))
    await client.wait_for(lambda f: f["type"] == "job.progress", timeout=60)
    for command, event in (("job.pause", "job.paused"), ("job.resume", "job.resumed")):
        await client.send({"type": command, "job_id": long.job_id, "id": command})
        ack = await client.acked(command)
        print(f"{command}: {ack['data']['status']['state']}", flush=True)
        await client.wait_for(lambda f, e=event: f["type"] == e, timeout=30)
    await asyncio.to_thread(long.cancel)
    await client.close()
    print(f"CLIENT PASSED in {time.monotonic() - started:.1f} s", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
    sys.exit(0)
