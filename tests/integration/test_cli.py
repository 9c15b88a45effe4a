"""The console script, as a user runs it: ``control-plane demo`` and the job commands."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import ray

import control_plane
from tests.conftest import free_port
from tests.integration.wsclient import TestSocket

pytestmark = pytest.mark.ray


def _script() -> str:
    beside = Path(sys.executable).with_name("control-plane")
    found = str(beside) if beside.exists() else shutil.which("control-plane")
    assert found, "the control-plane console script is not installed"
    return found


async def _read_until(stream: asyncio.StreamReader, needle: str, timeout: float) -> list[str]:
    lines: list[str] = []
    async with asyncio.timeout(timeout):
        while True:
            raw = await stream.readline()
            if not raw:
                raise AssertionError(f"process ended before printing {needle!r}: {lines}")
            lines.append(raw.decode(errors="replace").rstrip())
            if needle in lines[-1]:
                return lines


async def test_demo_from_the_console_script_streams_job_agent_and_system_events() -> None:
    port = free_port()
    token = "demo-" + os.urandom(4).hex()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = await asyncio.create_subprocess_exec(
        _script(),
        "demo",
        "--port",
        str(port),
        "--token",
        token,
        "--rounds",
        "1",
        "--metrics-interval",
        "1",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
    )
    assert proc.stdout is not None
    try:
        lines = await _read_until(proc.stdout, "control plane ready", 180)
        assert any(f"http://127.0.0.1:{port}/?token={token}" in line for line in lines)
        drain = asyncio.get_running_loop().create_task(proc.stdout.read())
        sock = await TestSocket.open(f"ws://127.0.0.1:{port}/ws", token)
        await sock.subscribe("*", since=0)
        await sock.wait_type("system.metrics", timeout=60)
        await sock.wait_type("agent.output", timeout=120)
        await sock.wait_type("job.failed", timeout=120)
        progress = await sock.wait_type("job.progress", timeout=60)
        assert progress["channel"].startswith("job:")
        await sock.close()
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(proc.wait(), 120)
    output = (await drain).decode(errors="replace")
    assert code == 0, output[-3000:]
    assert "stopped" in output


def test_job_commands_from_the_shell(plane: Any) -> None:
    address = ray.get_runtime_context().gcs_address
    base = [_script()]

    def run(*args: str) -> str:
        out = subprocess.run(
            [*base, *args, "--address", address],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout

    job_id = (
        run("submit", "jobs.examples:countdown", "--arg", "steps=3000", "--arg", "delay=0.01")
        .strip()
        .splitlines()[-1]
    )
    assert json.loads(run("pause", job_id))["state"] == "paused"
    assert json.loads(run("status", job_id))["state"] == "paused"
    assert json.loads(run("resume", job_id))["state"] == "running"
    assert job_id in run("list")
    assert json.loads(run("cancel", job_id))["state"] == "cancelled"
    out = subprocess.run(
        [*base, "pause", job_id, "--address", address],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 1 and "cancelled" in out.stderr
    waited = run(
        "submit", "jobs.examples:countdown", "--arg", "steps=2", "--arg", "delay=0", "--wait"
    )
    assert json.loads(waited.strip().splitlines()[-1]) == {"steps": 2}


def test_watch_shows_a_job_to_its_end(plane: Any) -> None:
    import control_plane
    from tests.conftest import TOKEN

    job = control_plane.submit("jobs.examples:countdown", steps=10, delay=0.05)
    out = subprocess.run(
        [_script(), "watch", job.job_id, "--url", plane.ws_url, "--token", TOKEN],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert 'completed: {"steps": 10}' in out.stdout


def test_watch_finds_the_gateway_from_the_cluster_on_any_port(plane: Any) -> None:
    """No --url: ``watch`` asks the cluster where its gateway replicas listen (this session's
    gateway is on a random port, not 8000), with the token from the environment."""
    import control_plane
    from tests.conftest import TOKEN

    env = {k: v for k, v in os.environ.items() if k not in ("CONTROL_PLANE_URL", "RAY_ADDRESS")}
    env["CONTROL_PLANE_TOKEN"] = TOKEN
    job = control_plane.submit("jobs.examples:countdown", steps=3, delay=0.05)
    address = ray.get_runtime_context().gcs_address
    out = subprocess.run(
        [_script(), "watch", job.job_id, "--address", address],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert plane.port != 8000
    assert out.returncode == 0, out.stderr[-3000:]
    assert 'completed: {"steps": 3}' in out.stdout


def test_suspend_from_the_shell_and_its_refusal_for_a_job_that_never_saved(plane: Any) -> None:
    address = ray.get_runtime_context().gcs_address

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [_script(), *args, "--address", address], capture_output=True, text=True, timeout=120
        )

    saving = run(
        "submit", "jobs.examples:resumable_sum", "--arg", "steps=2000", "--arg", "delay=0.01"
    )
    plain = run("submit", "jobs.examples:countdown", "--arg", "steps=3000", "--arg", "delay=0.01")
    saving_id = saving.stdout.strip().splitlines()[-1]
    plain_id = plain.stdout.strip().splitlines()[-1]
    handle = control_plane.get_job(saving_id)
    deadline = time.monotonic() + 60
    while handle.status().progress == 0:  # it has saved once it reports progress
        assert time.monotonic() < deadline, "the saving job did not start"
        time.sleep(0.05)
    refused = run("suspend", plain_id)
    assert refused.returncode == 1 and "ctx.save" in refused.stderr, refused.stderr
    suspended = run("suspend", saving_id)
    assert suspended.returncode == 0, suspended.stderr[-2000:]
    assert json.loads(suspended.stdout)["state"] == "suspended"
    assert json.loads(run("status", saving_id).stdout)["state"] == "suspended"
    for job_id in (saving_id, plain_id):
        assert json.loads(run("cancel", job_id).stdout)["state"] == "cancelled"
