"""Observability pieces that need no Ray: the JSON log lines, the dashboard's queries
against the metric names, and tracing, which costs nothing (imports nothing) unless asked
for and gives a span per command when it is."""

from __future__ import annotations

import asyncio
import contextvars
import io
import json
import logging
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from control_plane.core.hub_log import EventLog
from control_plane.core.protocol import JobCommand
from control_plane.gateway.manager import WebSocketManager
from control_plane.observability import logs, metrics, tracing
from tests.unit.hubfake import LogHub
from tests.unit.test_session import CONFIG, FakeSocket, open_socket

ROOT = Path(__file__).resolve().parent.parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "control-plane.json"
SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum")}


def exported_names() -> set[str]:
    """What Ray's endpoint calls each metric of ``SPECS``."""
    return {
        f"ray_{metrics.PREFIX}{name}{suffix}"
        for name, spec in metrics.SPECS.items()
        for suffix in SUFFIXES[spec.kind]
    }


def test_the_dashboard_parses_and_queries_only_series_the_control_plane_exports() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert exprs and all(p["datasource"]["type"] == "prometheus" for p in dashboard["panels"])
    named = {n for e in exprs for n in re.findall(r"\bray_control_plane_[a-z0-9_]+", e)}
    assert named <= exported_names(), named - exported_names()
    covered = {n for n in metrics.SPECS if any(f"ray_{metrics.PREFIX}{n}" in e for e in exprs)}
    assert covered == set(metrics.SPECS), "a metric with no panel"


def test_metric_names_and_tags_are_prometheus_names_with_no_ids() -> None:
    for name, spec in metrics.SPECS.items():
        assert re.fullmatch(r"[a-z][a-z0-9_]*", name)
        assert not {"job_id", "client_id", "request_id"} & set(spec.tags)
    assert metrics.type_tag("job.progress") == "job.progress"
    assert metrics.type_tag("app.marker") == "other"


def test_a_json_log_line_has_its_fields() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.formatter("json"))
    logger = logging.getLogger("test.observability.json")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logs.log_event(logger, "command", job_id="j1", client_id="c1", outcome="ok")
    line = json.loads(stream.getvalue())
    assert line["event"] == "command" and line["level"] == "INFO"
    assert (line["job_id"], line["client_id"], line["outcome"]) == ("j1", "c1", "ok")
    assert line["message"] == "command job_id=j1 client_id=c1 outcome=ok"


def test_without_otel_settings_tracing_imports_nothing() -> None:
    code = (
        "import sys\n"
        "from control_plane.observability import tracing\n"
        "with tracing.span('command', job_id='j'):\n"
        "    pass\n"
        "tracing.record('hub.append', tracing.now_ns(), events=1)\n"
        "assert tracing.carrier() is None and not tracing.active()\n"
        "import control_plane.gateway.manager, control_plane.actors.hub\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


# --- spans with the SDK's in-memory exporter ---------------------------------------------------


@pytest.fixture
def spans() -> Iterator[Any]:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("control_plane")
    tracing._tracer, tracing._checked = tracer, True  # this provider, not a global one
    try:
        yield exporter
    finally:
        tracing.disable()


async def controller_side(job_id: str, carrier: dict[str, str] | None) -> None:
    """What the controller does with the carrier the gateway sends it (in a context of its
    own, as in another process): its span, the job actor's, and ``job.paused``."""
    with (
        tracing.span("controller.command", carrier, job_id=job_id, command="pause"),
        tracing.span("job_actor.pause", job_id=job_id) as actor_span,
    ):
        tracing.event(actor_span, "job.paused", job_id=job_id)


@pytest.fixture
async def traced_manager() -> AsyncIterator[WebSocketManager]:
    async def run_command(msg: JobCommand, client_id: str) -> dict[str, Any]:
        carrier = tracing.carrier()
        task = asyncio.get_running_loop().create_task(
            controller_side(msg.job_id, carrier), context=contextvars.Context()
        )
        await task
        return {"status": {"state": "paused"}}

    m = WebSocketManager()
    m.configure(CONFIG, LogHub(EventLog(capacity=100, epoch="e")), commands=run_command)
    m.start()
    yield m
    await m.close_all()


async def test_a_command_is_one_trace_from_the_socket_to_the_job_paused_event(
    spans: Any, traced_manager: WebSocketManager
) -> None:
    ws: FakeSocket
    ws, _ = await open_socket(traced_manager, "tracer")
    ws.say({"type": "job.pause", "job_id": "j7", "id": "p"})
    await ws.wait_for(lambda f: f["type"] == "ack")
    finished = {s.name: s for s in spans.get_finished_spans()}
    assert set(finished) == {"command", "controller.command", "job_actor.pause"}
    root, controller, actor = (
        finished["command"],
        finished["controller.command"],
        finished["job_actor.pause"],
    )
    assert root.parent is None and root.attributes["job_id"] == "j7"
    assert controller.context.trace_id == root.context.trace_id
    assert controller.parent.span_id == root.context.span_id
    assert actor.parent.span_id == controller.context.span_id
    assert [e.name for e in actor.events] == ["job.paused"]


def test_a_hub_batch_is_a_span(spans: Any) -> None:
    tracing.record("hub.append", tracing.now_ns(), events=3, head=42)
    (span,) = spans.get_finished_spans()
    assert span.name == "hub.append" and span.attributes["events"] == 3
