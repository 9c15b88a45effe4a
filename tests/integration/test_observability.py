"""The control plane's metrics on Ray's own Prometheus endpoint, read over HTTP as
Prometheus reads it, after a countdown, a pause, a restart and a slow consumer; and the
Grafana dashboard's queries against what that endpoint served.

The session's Ray exports on ``METRICS_PORT`` (``tests/conftest.py``). Ray's metrics agent
exports what the processes recorded every few seconds, and our shells flush their counts
about once a second: the endpoint is polled with a deadline until each series is there.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import pytest
import ray

import control_plane
from tests.conftest import METRICS_PORT, TOKEN
from tests.integration.rawclient import RawClient, healthz

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parent.parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "control-plane.json"
METRICS_URL = f"http://127.0.0.1:{METRICS_PORT}/metrics"
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
SERIES_IN_EXPR = re.compile(r"\bray_control_plane_[a-zA-Z0-9_]+")

Samples = dict[str, list[tuple[dict[str, str], float]]]


def parse(text: str) -> Samples:
    """Prometheus' text format: each sample's name, labels and value."""
    samples: Samples = defaultdict(list)
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if match and not line.startswith("#"):
            labels = dict(LABEL.findall(match.group(3) or ""))
            samples[match.group(1)].append((labels, float(match.group(4))))
    return samples


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of a series over every process that exports it (the labels given must match)."""
    return sum(
        value
        for have, value in samples.get(name, [])
        if all(have.get(k) == v for k, v in labels.items())
    )


def dashboard_series() -> set[str]:
    """Every series that a query of the Grafana dashboard names."""
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    return {name for expr in exprs for name in SERIES_IN_EXPR.findall(expr)}


async def scrape() -> tuple[str, Samples]:
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.get(METRICS_URL)
        response.raise_for_status()
        return response.text, parse(response.text)


async def slow_closed(plane: Any) -> int:
    """The gateway's count of slow closes (-1 when /healthz did not answer this time)."""
    try:
        return int((await healthz(plane)).get("slow_closed", 0))
    except httpx.HTTPError:
        return -1


async def command(client: RawClient, kind: str, job_id: str, request_id: str) -> dict[str, Any]:
    await client.send({"type": kind, "job_id": job_id, "id": request_id})
    reply: dict[str, Any] = await client.acked(request_id, 120)
    return reply


async def slow_consumer_closed(plane: Any) -> int:
    """A client that stops reading a busy job's channel: closed by the server; its code."""
    job = await asyncio.to_thread(
        control_plane.submit,
        "jobs.examples:countdown",
        steps=15_000,
        delay=0,
        job_options={"pause_timeout": 30},
    )
    assert (await asyncio.to_thread(job.pause)).state == "paused"
    slow = RawClient(plane.ws_url, TOKEN, max_queue=1, rcvbuf=8192)
    await slow.connect()
    await slow.acked(await slow.subscribe([f"job:{job.job_id}"]))
    slow.stop_reading()
    before = (await healthz(plane)).get("slow_closed", 0)
    await asyncio.to_thread(job.resume)
    async with asyncio.timeout(480):  # minutes on a machine that others load heavily
        while await slow_closed(plane) <= before:
            await asyncio.sleep(0.2)
    slow.resume_reading()  # what was buffered, then the close frame
    closed = await slow.wait_closed(180)
    await asyncio.to_thread(job.wait, 240)
    assert closed.code is not None
    return closed.code


EXPECTED = {
    # series: what makes its value plausible after the scenario
    "ray_control_plane_events_published_total": lambda s: (
        total(s, "ray_control_plane_events_published_total", type="job.progress") >= 15_020
    ),
    "ray_control_plane_events_appended_total": lambda s: (
        total(s, "ray_control_plane_events_appended_total", type="job.progress") >= 15_020
        and total(s, "ray_control_plane_events_appended_total", type="job.paused") >= 1
    ),
    "ray_control_plane_hub_history_events": lambda s: (
        total(s, "ray_control_plane_hub_history_events") >= 1_000
    ),
    "ray_control_plane_hub_history_bytes": lambda s: (
        total(s, "ray_control_plane_hub_history_bytes")
        >= 50 * total(s, "ray_control_plane_hub_history_events")
    ),
    "ray_control_plane_hub_head_seq": lambda s: (
        total(s, "ray_control_plane_hub_head_seq")
        >= total(s, "ray_control_plane_hub_history_events")
    ),
    "ray_control_plane_reader_lag_events": lambda s: all(
        "replica" in labels and value >= 0
        for labels, value in s["ray_control_plane_reader_lag_events"]
    ),
    "ray_control_plane_sockets_open": lambda s: all(
        "replica" in labels and value >= 0 for labels, value in s["ray_control_plane_sockets_open"]
    ),
    "ray_control_plane_frames_sent_total": lambda s: (
        total(s, "ray_control_plane_frames_sent_total") >= 20
    ),
    "ray_control_plane_socket_closes_total": lambda s: (
        total(s, "ray_control_plane_socket_closes_total", code="4008") >= 1
    ),
    "ray_control_plane_command_seconds_bucket": lambda s: (
        total(
            s, "ray_control_plane_command_seconds_bucket", command="pause", outcome="ok", le="+Inf"
        )
        >= 1
    ),
    "ray_control_plane_command_seconds_count": lambda s: (
        total(s, "ray_control_plane_command_seconds_count", command="cancel", outcome="ok") >= 1
    ),
    "ray_control_plane_command_seconds_sum": lambda s: (
        total(s, "ray_control_plane_command_seconds_sum", command="pause") > 0
    ),
    "ray_control_plane_submit_to_started_seconds_bucket": lambda s: True,
    "ray_control_plane_submit_to_started_seconds_count": lambda s: (
        total(s, "ray_control_plane_submit_to_started_seconds_count") >= 3
    ),
    "ray_control_plane_submit_to_started_seconds_sum": lambda s: (
        total(s, "ray_control_plane_submit_to_started_seconds_sum") > 0
    ),
    "ray_control_plane_jobs": lambda s: (
        total(s, "ray_control_plane_jobs", state="completed") >= 2
        and total(s, "ray_control_plane_jobs", state="cancelled") >= 1
    ),
    "ray_control_plane_job_restarts_total": lambda s: (
        total(s, "ray_control_plane_job_restarts_total") >= 1
    ),
}


@pytest.mark.timeout(900)
async def test_every_series_reaches_rays_metrics_endpoint_after_a_countdown_a_pause_and_a_slow_consumer(  # noqa: E501
    plane: Any,
) -> None:
    # A countdown to its end.
    short = await asyncio.to_thread(
        control_plane.submit, "jobs.examples:countdown", steps=20, delay=0.01
    )
    await asyncio.to_thread(short.wait, 120)

    # A pause and a resume from a socket, a restart (its actor killed), then a cancel.
    client = RawClient(plane.ws_url, TOKEN)
    await client.connect()
    long = await asyncio.to_thread(
        control_plane.submit, "jobs.examples:countdown", steps=100_000, delay=0.05
    )
    channel = f"job:{long.job_id}"
    await client.acked(await client.subscribe([channel]))
    paused = await command(client, "job.pause", long.job_id, "p1")
    assert paused["data"]["status"]["state"] == "paused"
    await client.wait_for(lambda f: f["type"] == "job.paused", 60)
    await command(client, "job.resume", long.job_id, "r1")
    ray.kill(long.actor, no_restart=True)
    restarted = await client.wait_for(lambda f: f["type"] == "job.restarted", 120)
    await client.wait_for(lambda f: f["type"] == "job.started" and f["seq"] > restarted["seq"], 120)
    await command(client, "job.cancel", long.job_id, "c1")
    await client.close()

    # A client that stops reading: closed as a slow consumer.
    assert await slow_consumer_closed(plane) == 4008

    # Ray's agent exports what the processes recorded every few seconds.
    failing: list[str] = list(EXPECTED)
    text, samples = "", {}
    deadline = time.monotonic() + 120
    while failing and time.monotonic() < deadline:
        text, samples = await scrape()
        failing = [n for n, ok in EXPECTED.items() if not (samples.get(n) and ok(samples))]
        if failing:
            await asyncio.sleep(1.0)
    ours = [line for line in text.splitlines() if "ray_control_plane_" in line.split("{")[0]]
    print("\n[Ray's metrics endpoint, control_plane lines]\n" + "\n".join(ours))
    assert not failing, f"missing or implausible on {METRICS_URL}: {failing}\n" + "\n".join(ours)

    # No job or client id in any tag.
    ids = {short.job_id, long.job_id, *(c for c in [client.client_id] if c)}
    assert not [line for line in ours if any(i in line for i in ids)]

    # Every query of the Grafana dashboard names a series the endpoint served.
    named = dashboard_series()
    assert named, "the dashboard names no series"
    assert named <= set(samples), f"the dashboard names series never served: {named - set(samples)}"


# --- structured logs --------------------------------------------------------------------------


def _json_of(line: str) -> dict[str, Any] | None:
    """The JSON object of a log line, also behind the prefix Ray puts on a worker's lines
    that it forwards to the driver (``(ServeReplica:... pid=123) {...}``)."""
    start = line.find("{")
    if start < 0:
        return None
    try:
        found = json.loads(line[start:])
    except ValueError:
        return None
    return found if isinstance(found, dict) else None


@pytest.mark.timeout(600)
async def test_json_logs_have_a_line_per_command_and_per_close_and_no_token() -> None:
    from tests.conftest import free_port

    port = free_port()
    token = "logs-" + os.urandom(8).hex()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "control_plane.cli",
        "--log-format",
        "json",
        "serve",
        "--port",
        str(port),
        "--token",
        token,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
    )
    assert proc.stdout is not None
    lines: list[str] = []

    async def read_until(predicate: Any, timeout: float) -> None:
        assert proc.stdout is not None
        async with asyncio.timeout(timeout):
            while not any(predicate(line) for line in lines):
                raw = await proc.stdout.readline()
                if not raw:
                    raise AssertionError("the server ended:\n" + "\n".join(lines[-40:]))
                lines.append(raw.decode(errors="replace").rstrip())

    def logged(event: str) -> list[dict[str, Any]]:
        found = [_json_of(line) for line in lines]
        return [f for f in found if f is not None and f.get("event") == event]

    try:
        await read_until(lambda line: "control plane ready" in line, 240)
        client = RawClient(f"ws://127.0.0.1:{port}/ws", token, client_id="log-client-1")
        await client.connect()
        await client.send({"type": "job.pause", "job_id": "no-such-job", "id": "q1"})
        reply = await client.reply_to("q1", 60)
        assert reply["type"] == "error"
        await client.close()
        await read_until(lambda line: '"event": "close"' in line, 60)
        await read_until(lambda line: '"event": "command"' in line, 60)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
        with contextlib.suppress(Exception):
            rest, _ = await asyncio.wait_for(proc.communicate(), 120)
            lines += rest.decode(errors="replace").splitlines()
    (command_line,) = logged("command")
    assert command_line["job_id"] == "no-such-job"
    assert command_line["client_id"] == "log-client-1"
    assert command_line["command"] == "pause"
    assert command_line["outcome"] == reply["data"]["code"]
    closes = [c for c in logged("close") if c["client_id"] == "log-client-1"]
    assert closes and closes[0]["code"] == 1000 and closes[0]["outcome"] == "normal"
    assert closes[0]["by"] == "client" and "job_id" in closes[0]
    print("\n[JSON log lines]\n" + "\n".join(json.dumps(x) for x in [command_line, closes[0]]))
    # The printed URL carries the token (the contract: the user opens it); nothing else may.
    assert [line for line in lines if token in line and "?token=" not in line] == []
