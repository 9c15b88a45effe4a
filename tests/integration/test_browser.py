"""The JavaScript client (``/static/cp-client.js``) in headless Chromium against the real
gateway: it resumes after its socket is closed under it, and its commands resolve or reject
with the server's error code."""

from __future__ import annotations

import logging
import statistics
from collections.abc import AsyncIterator
from typing import Any

import pytest

import control_plane
from tests.conftest import TOKEN
from tests.integration.chromium import WAIT_MS, gateway_tab, needs_chromium
from tests.integration.test_client import hub_log

pytestmark = [
    pytest.mark.ray,
    needs_chromium,
]
logger = logging.getLogger(__name__)


# Collects one job's events and the client's states into window globals.
START_CLIENT = """async (jobId) => {
  window.seen = []; window.states = []; window.gaps = [];
  const cp = window.cp = new ControlPlaneClient({backoffInitial: 10});
  cp.onState((s) => states.push([s, performance.now()]));
  cp.on("client.gap", (e) => gaps.push(e));
  cp.onEvent((e) => {
    if (e.seq != null && e.data.job_id === jobId) seen.push([e.seq, e.type]);
  });
  await cp.connect();
  await cp.subscribe(["job:" + jobId], {since: 0});
  return cp.state;
}"""


@pytest.fixture
async def page(plane: Any) -> AsyncIterator[Any]:
    """A page of the gateway (opened through the token URL, so it has the cookie) with
    cp-client.js loaded."""
    async with gateway_tab(f"{plane.base_url}/?token={TOKEN}") as (tab, errors):
        await tab.add_script_tag(url="/static/cp-client.js")
        yield tab
        assert errors == []


async def test_the_js_client_resumes_after_its_socket_closes_with_every_event_once(
    plane: Any, page: Any
) -> None:
    job = control_plane.submit("jobs.examples:countdown", steps=80, delay=0.02)
    assert await page.evaluate(START_CLIENT, job.job_id) == "connected"
    drops: list[float] = []
    for n in range(1, 5):
        await page.wait_for_function(f"seen.length >= {12 * n}", timeout=WAIT_MS)
        await page.wait_for_function("cp.state === 'connected'", timeout=WAIT_MS)
        drops.append(await page.evaluate("cp._ws.close(), performance.now()"))
    await page.wait_for_function(
        "seen.some(([, type]) => type === 'job.completed')", timeout=WAIT_MS
    )
    seen = [tuple(e) for e in await page.evaluate("seen")]
    assert seen == await hub_log(plane, job.job_id)
    stats = await page.evaluate("({gaps: cp.gaps, reconnects: cp.reconnects, dups: cp.duplicates})")
    assert stats["gaps"] == 0 and stats["reconnects"] >= 4
    states = await page.evaluate("states")
    assert [s for s, _ in states].count("reconnecting") == 4
    resumed = [
        next(t for s, t in states if s == "connected" and t > dropped) - dropped
        for dropped in drops
    ]
    logger.info(
        "browser: drop -> resumed stream median %.0f ms (%s); %d duplicates dropped",
        statistics.median(resumed),
        ", ".join(f"{r:.0f}" for r in resumed),
        stats["dups"],
    )


async def test_js_commands_resolve_with_the_ack_or_reject_with_the_error_code(
    plane: Any, page: Any
) -> None:
    job = control_plane.submit("jobs.examples:countdown", steps=1000, delay=0.01)
    await page.evaluate(START_CLIENT, job.job_id)
    paused = await page.evaluate("(id) => cp.pause(id)", job.job_id)
    assert paused["status"]["state"] == "paused" and paused["job_id"] == job.job_id
    await page.wait_for_function("seen.some(([, type]) => type === 'job.paused')", timeout=WAIT_MS)
    assert (await page.evaluate("(id) => cp.cancel(id)", job.job_id))["command"] == "cancel"
    reject = "(id) => cp.pause(id).then(() => null, (e) => [e.name, e.code, e.jobId])"
    assert await page.evaluate(reject, "no-such-job") == [
        "ControlPlaneError",
        "job_not_found",
        "no-such-job",
    ]
    await page.wait_for_function(
        "seen.some(([, type]) => type === 'job.cancelled')", timeout=WAIT_MS
    )
    assert (await page.evaluate(reject, job.job_id))[1] == "invalid_transition"
    assert await page.evaluate("cp.ping()") > 0
    await page.evaluate("cp.close()")
    assert await page.evaluate("cp.state") == "closed"
