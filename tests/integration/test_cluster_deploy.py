"""Several gateway replicas behind the shipped nginx config, on a three-node cluster
(``nginx_scenario`` in its own process: a driver connects to one Ray at a time), and the
gateway built from the shipped Serve config (``deploy/serve.yaml``) on the session's Ray."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import TOKEN, free_port
from tests.integration.multinode_scenario import run_in_own_process
from tests.integration.rawclient import RawClient

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(420)
def test_fifty_clients_through_nginx_get_each_event_once_across_a_replica_kill() -> None:
    if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
        pytest.skip("nginx is not installed (.ci/run installs Debian's)")
    out = run_in_own_process("tests.integration.nginx_scenario", 400)
    steps = "\n".join(line for line in out.stdout.splitlines() if line.startswith("[multinode"))
    assert out.returncode == 0 and "NGINX SCENARIO PASSED" in out.stdout, (
        f"the nginx scenario exited with {out.returncode}\n{steps}\n"
        f"--- stdout (tail) ---\n{out.stdout[-4000:]}\n--- stderr (tail) ---\n{out.stderr[-4000:]}"
    )
    print(steps)


async def test_the_serve_config_builds_a_gateway_that_streams_jobs(
    plane: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``deploy/serve.yaml``'s application, through its builder, as ``serve deploy`` would:
    a second gateway (on a port of its own) over the same hub streams a job's events."""
    from ray import serve
    from ray.serve.schema import ServeDeploySchema

    import control_plane

    config = yaml.safe_load((ROOT / "deploy" / "serve.yaml").read_text())
    schema = ServeDeploySchema.model_validate(config)
    (app_config,) = schema.applications
    module, _, attr = app_config.import_path.partition(":")
    builder = getattr(__import__(module, fromlist=[attr]), attr)
    monkeypatch.setenv("CONTROL_PLANE_TOKEN", TOKEN)  # where the token comes from, not the file
    port = free_port()
    args = {**app_config.args, "host": "127.0.0.1", "port": port}
    app = await asyncio.to_thread(builder, args)
    await asyncio.to_thread(serve.run, app, name="from_serve_yaml", route_prefix=None)
    client = RawClient(f"ws://127.0.0.1:{port}/ws", TOKEN)
    try:
        await client.connect()
        job = control_plane.submit("jobs.examples:countdown", steps=5, delay=0.01)
        await client.acked(await client.subscribe([f"job:{job.job_id}"], since=0))
        done = await client.wait_for(lambda f: f["type"] == "job.completed", timeout=60)
        assert done["data"]["job_id"] == job.job_id
        assert len([f for f in client.events() if f["type"] == "job.progress"]) == 5
    finally:
        await client.close()
        await asyncio.to_thread(serve.delete, "from_serve_yaml")


def test_a_serve_config_with_an_unknown_argument_is_refused() -> None:
    from pydantic import ValidationError

    from control_plane.serve_app import app_builder

    with pytest.raises(ValidationError, match="prot"):
        app_builder({"prot": 8000})
