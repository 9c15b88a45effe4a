"""The seed's own JavaScript client, verbatim, in headless Chromium against the real gateway.

The seed (its "Client Side (JavaScript)" section) reads ``message.progress``,
``message.result`` and ``message.agent_id`` at the top level of each frame, sends no
application-level ping and never reconnects. Its text below is copied from the seed; the
only substitutions are the gateway's URL for ``ws://localhost:8000/ws`` and ``jobId``,
which the page defines before the script runs. The page defines the three functions the
seed calls and records their arguments; listeners of our own (added after the seed's
code, wrapping none of it) count frames and record a close.

One socket, three phases: a job with agents is read the seed's way; the socket then stays
open through three quiet minutes (the server keeps it alive with RFC 6455 pings, which
Chromium answers by itself); then it reads a 100,000-event job at full speed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

import control_plane
from tests.integration.chromium import WAIT_MS, gateway_tab, needs_chromium

pytestmark = [
    pytest.mark.ray,
    needs_chromium,
]
logger = logging.getLogger(__name__)

QUIET_MS = 180_000  # three minutes without a single event on the socket's channels
BURST = 100_000
BURST_MS = 150_000

SEED_URL = "ws://localhost:8000/ws"

# Verbatim from the seed, "Client Side (JavaScript)", up to its "Send command" snippet.
SEED_CLIENT = """\
const ws = new WebSocket('ws://localhost:8000/ws');

ws.onopen = () => {
    // Subscribe to job updates
    ws.send(JSON.stringify({
        type: 'subscribe',
        channels: ['job:' + jobId]
    }));
};

ws.onmessage = (event) => {
    const message = JSON.parse(event.data);
    
    switch(message.type) {
        case 'job.progress':
            updateProgressBar(message.progress);
            break;
        case 'job.completed':
            showResult(message.result);
            break;
        case 'agent.completed':
            updateAgentStatus(message.agent_id);
            break;
    }
};
"""  # noqa: W293 (the seed's own blank line with spaces, kept verbatim)

# Verbatim from the seed: its "Send command" snippet, run once the socket is open.
SEED_SEND_COMMAND = """\
// Send command
ws.send(JSON.stringify({
    type: 'job.pause',
    job_id: jobId
}));"""

# What the page defines before the seed's code: the seed's free names, recording.
PAGE_GLOBALS = """\
var jobId = %s;
var progressCalls = [], resultCalls = [], agentCalls = [];
function updateProgressBar(progress) { progressCalls.push(progress); }
function showResult(result) { resultCalls.push(result); }
function updateAgentStatus(agentId) { agentCalls.push(agentId); }
"""

# Our own listeners, after the seed's code: every frame counted by channel and type, the
# replies kept, seqs checked per channel, a close recorded.
PAGE_LISTENERS = """
var frames = {}, replies = [], seqFaults = [], closes = [], lastSeq = {};
ws.addEventListener('message', (event) => {
    const frame = JSON.parse(event.data);
    const key = (frame.channel || '') + ' ' + frame.type;
    frames[key] = (frames[key] || 0) + 1;
    if (frame.type === 'ack' || frame.type === 'error') replies.push(frame);
    if (frame.seq != null) {
        if (frame.seq <= (lastSeq[frame.channel] || 0)) seqFaults.push([frame.channel, frame.seq]);
        lastSeq[frame.channel] = frame.seq;
    }
});
ws.addEventListener('close', (event) => {
    closes.push({code: event.code, reason: event.reason, at: performance.now()});
});
"""


def seed_client(ws_url: str) -> str:
    assert SEED_CLIENT.count(SEED_URL) == 1
    return SEED_CLIENT.replace(SEED_URL, ws_url)


@pytest.fixture
async def page(plane: Any) -> AsyncIterator[Any]:
    """A page of the gateway's own origin that holds the token cookie (it opened the
    printed URL) and runs no script of ours yet."""
    async with gateway_tab(plane.url) as (tab, errors):  # the cookie; redirected to /
        assert any(c["name"] and c["httpOnly"] for c in await tab.context.cookies())
        # Leave the dashboard (its own socket would read every burst too), same origin.
        response = await tab.goto(f"{plane.base_url}/healthz")
        assert response is not None and response.ok
        yield tab
        assert errors == []


def held_before_any_progress(tries: int = 5) -> control_plane.JobHandle:
    """An ``agents_pipeline`` held at its first checkpoint, before its first progress.

    A pause acts at the next checkpoint: when a cached worker starts the job before the
    pause reaches it, the job is held at its second checkpoint, after ``progress(20)``.
    Such a job is cancelled and another one submitted."""
    for _ in range(tries):
        job = control_plane.submit(
            "jobs.examples:agents_pipeline",
            topic="seed client",
            delay=0.2,
            job_options={"pause_timeout": 30},
        )
        status = job.pause()
        assert status.state == "paused", status
        if status.progress == 0:
            return job
        job.cancel()
    pytest.fail(f"no job of {tries} was held before its first progress")


async def run_seed_client(page: Any, ws_url: str, job_id: str) -> None:
    await page.add_script_tag(content=PAGE_GLOBALS % json.dumps(job_id))
    await page.add_script_tag(content=seed_client(ws_url) + PAGE_LISTENERS)


async def frame_count(page: Any, channel: str, event_type: str) -> int:
    count: int = await page.evaluate(f"frames[{json.dumps(f'{channel} {event_type}')}] || 0")
    return count


async def wait_page(page: Any, condition: str, timeout_ms: int = WAIT_MS) -> None:
    """Wait until ``condition`` holds in the page; else fail with what the page saw."""
    from playwright.async_api import TimeoutError as PlaywrightTimeoutError

    try:
        await page.wait_for_function(condition, timeout=timeout_ms, polling=200)
    except PlaywrightTimeoutError:
        seen = await page.evaluate(
            "({readyState: ws.readyState, closes, progressCalls: progressCalls.length,"
            " resultCalls, agentCalls, frames})"
        )
        pytest.fail(f"{condition!r} not within {timeout_ms} ms; the page saw {seen}")


async def wait_reply(page: Any, predicate: str) -> dict[str, Any]:
    """The first ack or error whose ``r`` makes ``predicate`` true."""
    find = f"replies.find((r) => {predicate})"
    await wait_page(page, f"{find} !== undefined")
    reply: dict[str, Any] = await page.evaluate(find)
    return reply


@pytest.mark.timeout(600)
async def test_the_seeds_javascript_reads_jobs_stays_connected_and_keeps_up(
    plane: Any, page: Any
) -> None:
    from playwright.async_api import TimeoutError as PlaywrightTimeoutError

    # --- a) a job with agents, read the seed's way -------------------------------------
    # Held at its first checkpoint until the seed's socket has subscribed (the seed
    # subscribes without ``since``, so it sees only what comes after).
    job = await asyncio.to_thread(held_before_any_progress)
    await run_seed_client(page, plane.ws_url, job.job_id)
    channel = f"job:{job.job_id}"
    await wait_reply(page, f"r.type === 'ack' && (r.data.channels || []).includes('{channel}')")
    await asyncio.to_thread(job.resume)
    result = await asyncio.to_thread(job.wait, 60)
    await wait_page(page, "resultCalls.length === 1")
    progress, results, agents = await page.evaluate("[progressCalls, resultCalls, agentCalls]")
    assert progress == [20.0, 50.0, 80.0, 100.0]  # numbers, not undefined
    assert results == [result] and result["topic"] == "seed client"
    assert len(agents) == 4 and len(set(agents)) == 4
    assert [a.rsplit("-", 1)[0] for a in agents[:1] + agents[-1:]] == ["planner", "writer"]
    assert sorted(a.rsplit("-", 1)[0] for a in agents[1:3]) == ["researcher-1", "researcher-2"]
    assert await frame_count(page, channel, "agent.completed") == 4

    # The seed's "Send command" snippet, on a long job of its own: the job pauses.
    other = control_plane.submit("jobs.examples:countdown", steps=10_000, delay=0.01)
    await page.evaluate(f"jobId = {json.dumps(other.job_id)}")
    await page.evaluate(SEED_SEND_COMMAND)
    # the seed's command carries no id: its reply is the one naming the job (or an error)
    reply = await wait_reply(page, f"r.type === 'error' || r.data.job_id === '{other.job_id}'")
    assert reply["type"] == "ack" and reply["data"]["command"] == "pause", reply
    status = await asyncio.to_thread(other.status)
    assert status.state in ("pausing", "paused")
    await asyncio.to_thread(other.cancel)

    # --- b) three quiet minutes: the socket stays open ----------------------------------
    quiet_from = time.monotonic()
    with contextlib.suppress(PlaywrightTimeoutError):  # never closed: what it is owed
        await page.wait_for_function("closes.length > 0", timeout=QUIET_MS, polling=1000)
    closes = await page.evaluate("closes")
    assert closes == [], (
        f"the seed's socket was closed {closes[0]['at'] / 1000:.1f} s into the page, "
        f"{time.monotonic() - quiet_from:.1f} s into the quiet phase: {closes}"
    )
    assert await page.evaluate("ws.readyState") == 1
    assert await page.evaluate("progressCalls.length") == 4  # nothing came in the quiet

    # --- c) then a 100,000-event job at full speed, on the same socket -----------------
    burst = control_plane.submit("jobs.examples:countdown", steps=BURST, delay=0)
    await asyncio.to_thread(burst.pause)  # held before its first progress
    burst_channel = f"job:{burst.job_id}"
    subscribe = {"type": "subscribe", "channels": [burst_channel], "id": "burst"}
    await page.evaluate(f"ws.send(JSON.stringify({json.dumps(subscribe)}))")
    reply = await wait_reply(page, "r.data.request_id === 'burst'")
    assert reply["type"] == "ack", reply
    started = time.monotonic()
    await asyncio.to_thread(burst.resume)
    await wait_page(page, "resultCalls.length === 2 || closes.length > 0", BURST_MS)
    seen = await page.evaluate("({progress: progressCalls.length - 4, closes, seqFaults})")
    logger.info(
        "seed client: %d of %d progress frames in %.1f s; closes %s",
        seen["progress"],
        BURST,
        time.monotonic() - started,
        seen["closes"],
    )
    assert seen["closes"] == [] and await page.evaluate("ws.readyState") == 1
    assert await page.evaluate("resultCalls[1]") == {"steps": BURST}
    values = await page.evaluate("progressCalls.slice(4)")
    assert values == [100 * (i + 1) / BURST for i in range(BURST)]  # each once, in order
    assert seen["seqFaults"] == []
    assert await frame_count(page, burst_channel, "job.progress") == BURST
    await page.evaluate("ws.close()")
