"""The cluster launcher for real: ``ray up -y deploy/local-cluster.yaml`` over SSH to this
machine (``.ci/sshd-loopback`` lets root in with a key made for the run), a Python client
of the control plane it started, then ``ray down -y``.

``ray up``/``ray down`` run ``ray stop``, which stops every Ray on the machine: this test
runs before any other starts one (``tests/conftest.py`` orders ``ray_up`` tests first among
those that use Ray), and is skipped, saying why, where root cannot SSH to 127.0.0.1.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from control_plane.gateway import auth

pytestmark = [pytest.mark.ray_up, pytest.mark.timeout(1200)]

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_FILE = "deploy/local-cluster.yaml"


def _can_ssh_to_loopback() -> str | None:
    """None when root can SSH to 127.0.0.1 with its key; else why not."""
    if shutil.which("ssh") is None or shutil.which("rsync") is None:
        return "ssh or rsync is not installed (.ci/sshd-loopback installs them)"
    probe = subprocess.run(
        ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5", "root@127.0.0.1", "true"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if probe.returncode != 0:
        return f"root cannot ssh to 127.0.0.1 (.ci/sshd-loopback sets it up): {probe.stderr}"
    return None


def _ray(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run(
        ["ray", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_ray_up_brings_the_control_plane_up_and_ray_down_takes_it_away() -> None:
    import ray

    why = _can_ssh_to_loopback()
    if why is not None:
        pytest.skip(why)
    assert not ray.is_initialized(), "this test must run before the session's Ray starts"
    generated = _ray("get-auth-token", "--generate", timeout=60)  # Ray's token, ~/.ray
    assert generated.returncode == 0, generated.stderr
    auth.resolve_token()  # the control plane's, ~/.control_plane/token (the file mounted)

    timings: dict[str, float] = {}
    began = time.monotonic()
    try:
        up = _ray("up", "-y", "--no-config-cache", CLUSTER_FILE, timeout=900)
        timings["up"] = time.monotonic() - began
        assert up.returncode == 0, f"ray up failed:\n{up.stdout[-5000:]}\n{up.stderr[-5000:]}"
        assert "control plane ready on port 8000" in up.stdout + up.stderr, up.stdout[-3000:]

        client_began = time.monotonic()
        env = {**os.environ, "RAY_ADDRESS": "127.0.0.1:6379", "RAY_AUTH_MODE": "token"}
        client = subprocess.run(
            [sys.executable, "-m", "tests.integration.ray_up_client"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        timings["client"] = time.monotonic() - client_began
        assert client.returncode == 0 and "CLIENT PASSED" in client.stdout, (
            f"{client.stdout[-4000:]}\n{client.stderr[-6000:]}"
        )
        print(client.stdout)
    finally:
        down_began = time.monotonic()
        down = _ray("down", "-y", CLUSTER_FILE, timeout=300)
        timings["down"] = time.monotonic() - down_began
        print("ray up timings (s):", {k: round(v, 1) for k, v in timings.items()})
    assert down.returncode == 0, f"ray down failed:\n{down.stdout[-3000:]}\n{down.stderr[-3000:]}"
    left = subprocess.run(["pgrep", "-f", "raylet|gcs_server"], capture_output=True, text=True)
    assert left.stdout.strip() == "", f"Ray processes left after ray down: {left.stdout}"
    # The control plane goes with its cluster (head-start.sh says how soon).
    deadline = time.monotonic() + 60
    while (served := _pgrep("serve --address auto")) and time.monotonic() < deadline:
        time.sleep(1)
    assert not served, f"the control plane outlived ray down: {served}"


def _pgrep(pattern: str) -> str:
    found = subprocess.run(["pgrep", "-af", pattern], capture_output=True, text=True).stdout
    return "\n".join(line for line in found.splitlines() if "pgrep" not in line)
