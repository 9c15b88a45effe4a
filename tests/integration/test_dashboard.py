"""The dashboard (``/``) in Debian's headless Chromium against the real gateway: the jobs
table, a job's page and its buttons, the submit form, reconnecting after a server-side close
with no event missing, keyboard use, axe-core's checks, and the frame time under load.

Screenshots go to each test's temporary folder (its path is logged)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import statistics
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

import control_plane
from control_plane.core.errors import ControlPlaneError
from control_plane.core.tokens import Credentials
from tests.conftest import TOKEN
from tests.integration.chromium import CHROMIUM, CHROMIUM_ARGS, WAIT_MS, needs_chromium
from tests.integration.test_client import hub_log
from tests.integration.wsclient import TestSocket

pytestmark = [pytest.mark.ray, needs_chromium]
logger = logging.getLogger(__name__)

AXE = Path(__file__).parent / "vendor" / "axe.min.js"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}

# Every state the indicator shows, in order (the indicator's attribute, observed).
WATCH_INDICATOR = """() => {
  window.connStates = [];
  const box = document.getElementById("conn");
  new MutationObserver(() => connStates.push(box.dataset.state))
    .observe(box, {attributes: true, attributeFilter: ["data-state"]});
}"""
TIMELINE_SEQS = """() => Array.from(document.querySelectorAll("#d-timeline tr"))
  .map((tr) => [Number(tr.dataset.seq), tr.children[2].textContent]).reverse()"""


class Dashboard:
    """A browser context that opened the printed URL (so it holds the cookie)."""

    def __init__(self, context: Any, base_url: str, shots: Path) -> None:
        self.context = context
        self.base_url = base_url
        self.shots = shots
        self.errors: list[str] = []

    async def page(self, path: str = "/") -> Any:
        tab = await self.context.new_page()
        tab.on("pageerror", lambda e: self.errors.append(str(e)))
        await tab.goto(self.base_url + path)
        await tab.wait_for_function("window.dashboard && dashboard.main.state === 'connected'")
        return tab

    async def shot(self, tab: Any, name: str) -> Path:
        path = self.shots / f"{name}.png"
        await tab.screenshot(path=str(path))
        logger.info("screenshot %s", path)
        return path


@asynccontextmanager
async def dashboard(plane: Any, shots: Path, token: str = TOKEN) -> AsyncIterator[Dashboard]:
    """A browser whose context opened the printed URL (with ``token``): it holds the cookie."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = await browser.new_context(viewport=DESKTOP)
        context.set_default_timeout(WAIT_MS)
        first = await context.new_page()
        response = await first.goto(f"{plane.base_url}/?token={token}")
        assert response is not None and response.ok
        await first.close()
        board = Dashboard(context, plane.base_url, shots)
        try:
            yield board
        finally:
            await browser.close()
        assert board.errors == []


@pytest.fixture
async def dash(plane: Any, tmp_path: Path) -> AsyncIterator[Dashboard]:
    async with dashboard(plane, tmp_path) as board:
        yield board


async def state_is(tab: Any, state: str) -> None:
    await tab.wait_for_function(
        "(s) => document.getElementById('d-state').textContent === s", arg=state
    )


async def progress(tab: Any) -> float:
    value = await tab.get_attribute("#d-progress", "aria-valuenow")
    assert value is not None
    return float(value)


async def press(tab: Any, command: str) -> str:
    """Click a job's button; the ack or the error shown next to it."""
    out = f'#controls output[data-for="{command}"]'
    await tab.click(f'#controls button[data-cmd="{command}"]')
    await tab.wait_for_function(
        "(sel) => /ms\\)$/.test(document.querySelector(sel).textContent)", arg=out
    )
    text: str = await tab.text_content(out)
    return text


async def enabled(tab: Any) -> list[str]:
    buttons = "#controls button:not([disabled])"
    names: list[str] = await tab.eval_on_selector_all(buttons, "bs => bs.map(b => b.dataset.cmd)")
    return sorted(names)


async def assert_accessible(tab: Any, label: str) -> None:
    """axe-core (vendored for the tests only): no serious or critical violation."""
    if not await tab.evaluate("typeof axe !== 'undefined'"):
        await tab.add_script_tag(path=str(AXE))
    result = await tab.evaluate("axe.run(document, {resultTypes: ['violations']})")
    bad = [v for v in result["violations"] if v["impact"] in ("serious", "critical")]
    summary = [(v["id"], v["impact"], len(v["nodes"])) for v in result["violations"]]
    logger.info("axe on %s: violations %s", label, summary or "none")
    assert bad == [], json.dumps(bad, indent=1)[:4000]


async def ticks(tab: Any, clock: str, count: int) -> None:
    """Wait until the page has seen ``count`` more progress events of the job ``clock``:
    time measured in the hub's events, not in seconds."""
    await tab.evaluate(
        """(id) => { window.__ticks = 0; dashboard.main.on("job.progress",
          (e) => { if (e.data.job_id === id) window.__ticks++; }); }""",
        clock,
    )
    await tab.wait_for_function(f"window.__ticks >= {count}")


def rest(plane: Any, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    request = urllib.request.Request(
        plane.base_url + path,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


# --- the tests ---------------------------------------------------------------------------


async def test_the_printed_url_leaves_a_cookie_and_no_token_in_the_page(
    plane: Any, dash: Dashboard
) -> None:
    tab = await dash.page()
    assert "token" not in tab.url
    assert TOKEN not in await tab.content()
    for name in ("app.js", "cp-client.js", "style.css", "uplot.min.js"):
        response = await tab.request.get(f"{plane.base_url}/static/{name}")
        assert response.ok and TOKEN not in await response.text()
    assert await tab.text_content("#conn-text") == "connected"
    await tab.wait_for_function(
        "/^1 node/.test(document.getElementById('sys-summary').textContent)"
    )
    await tab.wait_for_function("document.querySelectorAll('#chart-jobs canvas').length === 1")


async def test_pause_resume_and_cancel_a_countdown_from_its_page(
    plane: Any, dash: Dashboard
) -> None:
    job = control_plane.submit("jobs.examples:countdown", steps=2000, delay=0.02)
    tab = await dash.page(f"/#/jobs/{job.job_id}")
    await state_is(tab, "running")
    await tab.wait_for_function("Number(document.getElementById('d-progress').ariaValueNow) >= 1")
    assert await enabled(tab) == ["cancel", "pause", "suspend"]
    await dash.shot(tab, "job-running")

    assert (await press(tab, "pause")).startswith("ack: paused")
    await state_is(tab, "paused")
    assert await enabled(tab) == ["cancel", "resume", "suspend"]
    held = await progress(tab)
    clock = control_plane.submit("jobs.examples:countdown", steps=100_000, delay=0.02)
    await ticks(tab, clock.job_id, 20)  # the progress stays while another job goes on
    clock.cancel()
    assert await progress(tab) == held

    assert (await press(tab, "resume")).startswith("ack: running")
    await state_is(tab, "running")
    await tab.wait_for_function(
        f"Number(document.getElementById('d-progress').ariaValueNow) > {held + 1}"
    )
    # the countdown never saves: suspend is refused, and the page says why next to it
    assert (await press(tab, "suspend")).startswith("not_suspendable:")

    assert (await press(tab, "cancel")).startswith("ack:")
    await state_is(tab, "cancelled")
    assert await enabled(tab) == []
    await assert_accessible(tab, "a cancelled job's page")


async def test_suspend_and_resume_a_job_that_saves(plane: Any, dash: Dashboard) -> None:
    job = control_plane.submit("jobs.examples:resumable_sum", steps=2000, delay=0.02)
    tab = await dash.page(f"/#/jobs/{job.job_id}")
    await tab.wait_for_function("Number(document.getElementById('d-progress').ariaValueNow) >= 1")
    assert (await press(tab, "suspend")).startswith("ack:")
    await state_is(tab, "suspended")
    assert await enabled(tab) == ["cancel", "resume"]
    held = await progress(tab)
    assert (await press(tab, "resume")).startswith("ack:")
    await state_is(tab, "running")
    await tab.wait_for_function(
        f"Number(document.getElementById('d-progress').ariaValueNow) > {held}"
    )
    assert (await press(tab, "cancel")).startswith("ack:")
    await state_is(tab, "cancelled")


async def test_a_job_submitted_from_the_form_appears_and_its_url_shows_the_same_state(
    plane: Any, dash: Dashboard
) -> None:
    tab = await dash.page()
    await tab.select_option("#submit-type", "countdown")
    await tab.fill("#submit-fields input[name=steps]", "30")
    await tab.fill("#submit-fields input[name=delay]", "0.05")
    await tab.click("#submit-form button[type=submit]")
    link = await tab.wait_for_selector("#submit-result a")
    job_id = (await link.text_content()) or ""
    row = await tab.wait_for_selector(f'#jobs-body tr[data-job="{job_id}"]')
    assert "countdown" in ((await row.text_content()) or "")
    await tab.wait_for_selector(f'#jobs-body tr[data-job="{job_id}"] .badge[data-state=completed]')
    await tab.evaluate("window.scrollTo(0, 0)")
    await dash.shot(tab, "jobs-table")
    await assert_accessible(tab, "the jobs table")

    first = await dash.page(f"/#/jobs/{job_id}")
    second = await dash.page(f"/#/jobs/{job_id}")
    for view in (first, second):
        await state_is(view, "completed")
        await view.wait_for_function(
            "document.querySelectorAll('#d-timeline tr[data-seq]').length > 0 &&"
            " document.querySelector('#d-timeline tr').children[2].textContent"
            " === 'job.completed'"
        )
    assert await first.evaluate(TIMELINE_SEQS) == await second.evaluate(TIMELINE_SEQS)
    assert await progress(first) == await progress(second) == 100
    assert [tuple(e) for e in await first.evaluate(TIMELINE_SEQS)] == await hub_log(plane, job_id)
    assert "Result" in ((await first.text_content("#d-outcome")) or "")


async def test_rest_submits_registered_types_only_with_checked_parameters(plane: Any) -> None:
    status, types = rest(plane, "GET", "/api/job-types")
    assert status == 200
    countdown = next(t for t in types if t["name"] == "countdown")
    assert countdown["params"] == [
        {"name": "steps", "kind": "int", "default": 10, "required": False},
        {"name": "delay", "kind": "float", "default": 0.1, "required": False},
    ]
    for body, says in [
        ({"type": "jobs.examples:spin", "params": {}}, "unknown job type"),
        ({"type": "countdown", "params": {"stepz": 1}}, "no parameter stepz"),
        ({"type": "countdown", "params": {"steps": "ten"}}, "steps must be int"),
        ({"type": "countdown", "params": {"steps": 1.5}}, "steps must be int"),
        ({"type": "countdown", "target": "os:system"}, "unknown field target"),
    ]:
        status, reply = rest(plane, "POST", "/api/submit", body)
        assert status == 422 and says in reply["detail"], (body, reply)
    status, reply = rest(plane, "POST", "/api/submit", {"type": "fail", "params": {"after": 1}})
    assert status == 201 and reply["name"] == "fail" and reply["owner"] == "admin"
    with pytest.raises(Exception, match="failed on purpose"):
        await asyncio.to_thread(control_plane.get_job(reply["job_id"]).wait, 60)


async def test_a_failed_job_shows_its_error_with_the_traceback_folded(
    plane: Any, dash: Dashboard
) -> None:
    job = control_plane.submit("jobs.examples:fail", after=1)
    tab = await dash.page(f"/#/jobs/{job.job_id}")
    await state_is(tab, "failed")
    await tab.wait_for_selector("#d-outcome details:not([open])")
    assert "failed on purpose" in ((await tab.text_content("#d-outcome")) or "")
    await tab.click("#d-outcome summary")
    assert "Traceback" in ((await tab.text_content("#d-outcome details pre")) or "")


async def test_after_a_server_side_close_the_page_reconnects_and_misses_no_event(
    plane: Any, dash: Dashboard
) -> None:
    job = control_plane.submit("jobs.examples:countdown", steps=120, delay=0.03)
    tab = await dash.page(f"/#/jobs/{job.job_id}")
    await tab.evaluate(WATCH_INDICATOR)
    await tab.wait_for_function("document.querySelectorAll('#d-timeline tr').length >= 10")
    # A socket of the page's principal with the page's client id replaces the page's: the
    # server closes it (1000).
    ids = await tab.evaluate("[dashboard.main.clientId, dashboard.detail.client.clientId]")
    who = await tab.evaluate("dashboard.principal")
    token = Credentials.from_token(TOKEN).sign(who["sub"], who["role"], 600)
    intruders = [
        await TestSocket.open(f"{plane.ws_url}?client_id={client_id}", token) for client_id in ids
    ]
    await tab.wait_for_function("connStates.includes('reconnecting')")
    await tab.wait_for_function("document.getElementById('conn').dataset.state === 'connected'")
    states = await tab.evaluate("connStates")
    assert states[0] == "reconnecting" and states[-1] == "connected", states
    for sock in intruders:
        await sock.close()
    await state_is(tab, "completed")
    await tab.wait_for_function(
        "document.querySelector('#d-timeline tr').children[2].textContent === 'job.completed'"
    )
    seen = [tuple(e) for e in await tab.evaluate(TIMELINE_SEQS)]
    assert seen == await hub_log(plane, job.job_id)
    assert await tab.evaluate("dashboard.detail.client.reconnects") >= 1
    assert await tab.evaluate("dashboard.detail.client.gaps") == 0


async def test_keyboard_alone_reaches_and_presses_pause(plane: Any, dash: Dashboard) -> None:
    job = control_plane.submit("jobs.examples:countdown", steps=2000, delay=0.02)
    tab = await dash.page(f"/#/jobs/{job.job_id}")
    await state_is(tab, "running")
    path = []
    for _ in range(40):
        await tab.keyboard.press("Tab")
        focused = await tab.evaluate(
            "(() => { const e = document.activeElement;"
            " return [e.tagName, e.dataset.cmd || e.textContent.trim().slice(0, 20),"
            " getComputedStyle(e).outlineStyle]; })()"
        )
        path.append(focused[1])
        if focused[:2] == ["BUTTON", "pause"]:
            assert focused[2] != "none"  # the focus is visible
            break
    else:
        raise AssertionError(f"Tab never reached Pause: {path}")
    logger.info("Tab path to Pause: %s", path)
    await dash.shot(tab, "keyboard-focus-on-pause")
    await tab.keyboard.press("Enter")
    await state_is(tab, "paused")
    assert "ack: paused" in ((await tab.text_content('output[data-for="pause"]')) or "")
    job.cancel()


async def test_the_page_is_accessible_and_readable_on_a_phone_in_the_dark(
    plane: Any, dash: Dashboard
) -> None:
    job = control_plane.submit("jobs.examples:agents_pipeline", delay=0.1)
    tab = await dash.page()
    await tab.set_viewport_size(PHONE)
    await tab.emulate_media(color_scheme="dark")
    await tab.wait_for_selector(f'#jobs-body tr[data-job="{job.job_id}"]')
    assert await tab.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    await dash.shot(tab, "phone-dark-jobs")
    await assert_accessible(tab, "the jobs table, phone, dark")
    await tab.goto(f"{plane.base_url}/#/jobs/{job.job_id}")
    await state_is(tab, "completed")
    await tab.wait_for_function("document.querySelectorAll('#d-agents li').length >= 4")
    assert await tab.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    await dash.shot(tab, "phone-dark-job")
    await assert_accessible(tab, "a job's page, phone, dark")


@pytest.mark.timeout(600)
async def test_frame_time_while_50_jobs_report_10_times_a_second(
    plane: Any, dash: Dashboard
) -> None:
    """Measured and reported, not asserted: a shared two-core machine decides the figure."""
    tab = await dash.page()
    jobs = [
        control_plane.submit("jobs.examples:emit_burst", count=1200, rate=10.0, job_name="load")
        for _ in range(50)
    ]
    ids = [j.job_id for j in jobs]
    running = (
        "(ids) => ids.filter((id) => { const j = dashboard.jobs.get(id);"
        " return j && j.state === 'running' && j.progress > 0; }).length"
    )
    # Fifty cold actors start on two CPUs: a minute or two here, once over five in CI.
    deadline = asyncio.get_running_loop().time() + 500
    while (seen := await tab.evaluate(f"({running})({json.dumps(ids)})")) < 50:
        if asyncio.get_running_loop().time() > deadline:
            states = Counter(j.status().state for j in jobs)
            raise AssertionError(f"{seen} of 50 jobs show progress on the page; {states}")
        await asyncio.sleep(1)
    await tab.evaluate(
        "Object.assign(dashboard.perf, {renders: 0, renderMs: 0, renderMax: 0, events: 0,"
        " eventMs: 0})"
    )
    stats = await tab.evaluate(
        """() => new Promise((resolve) => {
      const deltas = [];
      let events = 0, last = performance.now();
      const off = dashboard.main.onEvent(() => events++);
      const started = last;
      function tick(now) {
        deltas.push(now - last); last = now;
        if (deltas.length < 600) return requestAnimationFrame(tick);
        off();
        resolve({deltas, events, seconds: (now - started) / 1000,
          perf: Object.assign({}, dashboard.perf)});
      }
      requestAnimationFrame(tick);
    })"""
    )
    still = await tab.evaluate(f"({running})({json.dumps(ids)})")
    # virtualised: only the rows in view (and a few either side) are in the document
    drawn = await tab.evaluate("document.querySelectorAll('#jobs-body tr[data-job]').length")
    assert 10 <= drawn < 50
    deltas = sorted(stats["deltas"][1:])
    perf = stats["perf"]
    busy = (perf["renderMs"] + perf["eventMs"]) / 1000 / stats["seconds"]
    p50 = statistics.median(deltas)
    p95 = deltas[int(0.95 * (len(deltas) - 1))]
    figure = (
        f"dashboard frame time with 50 jobs at 10 events/s each: p50 {p50:.1f} ms, "
        f"p95 {p95:.1f} ms, max {deltas[-1]:.1f} ms over {len(deltas)} frames; "
        f"{stats['events'] / stats['seconds']:.0f} events/s reached the page; "
        f"{still} jobs still running at the end; the page's own work: "
        f"{perf['renders']} draws, mean {perf['renderMs'] / max(1, perf['renders']):.2f} ms, "
        f"max {perf['renderMax']:.1f} ms; {perf['events']} events handled in "
        f"{perf['eventMs']:.0f} ms ({100 * busy:.1f}% of the window)"
    )
    logger.info(figure)
    print(figure)
    alerts = await tab.query_selector_all("#alerts .alert")
    if alerts:  # stalls while fifty workers start: dismiss them, one, then all
        await tab.click("#alerts .alert button")
        if await tab.query_selector(".dismiss-all"):
            await tab.click(".dismiss-all")
        await tab.wait_for_function("document.querySelectorAll('#alerts .alert').length < 3")
    await dash.shot(tab, "jobs-table-under-load")
    for job in jobs:
        with contextlib.suppress(ControlPlaneError):  # one may have ended meanwhile
            job.cancel()
    assert len(deltas) == 599


async def test_the_indicator_says_offline_when_the_network_goes_and_recovers(
    plane: Any, dash: Dashboard
) -> None:
    tab = await dash.page()
    await tab.evaluate(WATCH_INDICATOR)
    await dash.context.set_offline(True)
    await tab.wait_for_function("document.getElementById('conn').dataset.state === 'offline'")
    await dash.context.set_offline(False)
    await tab.wait_for_function("document.getElementById('conn').dataset.state === 'connected'")
    assert (await tab.evaluate("connStates"))[0] == "offline"


async def test_a_viewer_gets_no_controls_and_an_operator_controls_its_own_jobs(
    plane: Any, tmp_path: Path
) -> None:
    credentials = Credentials.from_token(TOKEN)
    mine = control_plane.submit(
        "jobs.examples:countdown", steps=100_000, delay=0.05, job_owner="alice"
    )
    theirs = control_plane.submit(
        "jobs.examples:countdown", steps=100_000, delay=0.05, job_owner="carol"
    )
    try:
        viewer = credentials.sign("bob", "viewer", 600, ("alice",))
        async with dashboard(plane, tmp_path, viewer) as board:
            tab = await board.page(f"/#/jobs/{mine.job_id}")
            await state_is(tab, "running")
            assert await tab.text_content("#who") == "bob (viewer)"
            assert await enabled(tab) == []
            assert await tab.is_hidden("#submit-form")
        operator = credentials.sign("alice", "operator", 600, ("carol",))
        async with dashboard(plane, tmp_path, operator) as board:
            tab = await board.page(f"/#/jobs/{theirs.job_id}")
            await state_is(tab, "running")
            assert await enabled(tab) == []  # carol's: alice sees it, steers it not
            await tab.goto(f"{plane.base_url}/#/jobs/{mine.job_id}")
            await tab.wait_for_function(
                "(id) => document.getElementById('d-id').textContent === id", arg=mine.job_id
            )
            await state_is(tab, "running")
            assert await enabled(tab) == ["cancel", "pause", "suspend"]
            assert (await press(tab, "pause")).startswith("ack: paused")
            assert await tab.is_visible("#submit-form")
    finally:
        for job in (mine, theirs):
            with contextlib.suppress(ControlPlaneError):
                job.cancel()
