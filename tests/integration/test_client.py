"""The Python client SDK against the real gateway: ordered streams, typed command errors,
resume after a dropped connection with nothing lost or doubled, the sync wrapper, auth."""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
from contextlib import aclosing
from typing import Any

import pytest

import control_plane
from control_plane.client import (
    CommandRejected,
    ConnectionState,
    ControlPlaneClient,
    JobNotFound,
    RequestTimeout,
    SyncControlPlaneClient,
    TransitionRejected,
    Unauthorized,
)
from control_plane.core.errors import AuthError, InvalidTransitionError, JobNotFoundError
from tests.conftest import TOKEN, free_port
from tests.integration.rawclient import seq_on
from tests.integration.wsclient import TestSocket

pytestmark = pytest.mark.ray
logger = logging.getLogger(__name__)

TERMINAL = ("job.completed", "job.failed", "job.cancelled")


async def hub_log(plane: Any, job_id: str) -> list[tuple[int, str]]:
    """The job's whole stream as the hub retains it: a fresh subscribe from seq 0."""
    sock = await TestSocket.open(plane.ws_url, TOKEN)
    ack = await sock.subscribe(f"job:{job_id}", since=0)
    assert ack["data"]["recovered"] is True
    # the replay comes in seq order, so the job's last event comes last
    await sock.wait_for(lambda f: f["type"] in TERMINAL and f.get("seq") is not None)
    await sock.close()
    return [(f["seq"], f["type"]) for f in sock.events(job_id)]


def assert_nothing_left(client: ControlPlaneClient) -> None:
    """A closed client keeps no request, stream or task behind."""
    assert client.state is ConnectionState.CLOSED
    assert client._pending == {} and client._streams == set() and client._session is None
    assert client._runner is None or client._runner.done()


async def collect(
    client: ControlPlaneClient, channels: list[str], job_id: str, on_event: Any = None
) -> list[dict[str, Any]]:
    """The job's hub events from ``client.events`` until its terminal event."""
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(120):
        async with aclosing(client.events(channels, since=0)) as stream:
            async for event in stream:
                if event.get("seq") is None or event["data"].get("job_id") != job_id:
                    continue
                seen.append(event)
                if on_event is not None:
                    await on_event(event, seen)
                if event["type"] in TERMINAL:
                    return seen
    raise AssertionError("the stream ended before the job did")


async def test_the_client_yields_a_jobs_events_in_seq_order(plane: Any) -> None:
    async with ControlPlaneClient(plane.ws_url, TOKEN) as client:
        assert client.state is ConnectionState.CONNECTED
        job = control_plane.submit("jobs.examples:countdown", steps=5, delay=0.02)
        events = await collect(client, [f"job:{job.job_id}"], job.job_id)
    types = [e["type"] for e in events]
    assert types == ["job.created", "job.started"] + ["job.progress"] * 5 + ["job.completed"]
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(set(seqs))
    assert all(e["channel"] == f"job:{job.job_id}" and e["timestamp"] for e in events)
    assert [(e["seq"], e["type"]) for e in events] == await hub_log(plane, job.job_id)
    assert_nothing_left(client)


async def test_subscribing_to_a_job_passes_its_snapshot_through(plane: Any) -> None:
    job = control_plane.submit("jobs.examples:countdown", steps=2, delay=0)
    await job.result
    async with ControlPlaneClient(plane.ws_url, TOKEN) as client:
        async with asyncio.timeout(30):
            async with aclosing(client.events([f"job:{job.job_id}"])) as stream:
                async for event in stream:
                    assert event["type"] == "job.snapshot", event
                    assert event["data"]["status"] == "completed"
                    break


async def test_commands_return_the_ack_data_or_raise_a_typed_error(plane: Any) -> None:
    job = control_plane.submit("jobs.examples:countdown", steps=1000, delay=0.01)
    async with ControlPlaneClient(plane.ws_url, TOKEN) as client:
        paused = await client.pause(job.job_id)
        assert paused["job_id"] == job.job_id and paused["command"] == "pause"
        assert paused["status"]["state"] == "paused"
        assert (await client.resume(job.job_id))["status"]["state"] == "running"
        assert (await client.cancel(job.job_id))["command"] == "cancel"

        with pytest.raises(JobNotFoundError) as missing:
            await client.pause("no-such-job")
        assert isinstance(missing.value, JobNotFound | CommandRejected)
        assert missing.value.code == "job_not_found" and missing.value.job_id == "no-such-job"
        assert missing.value.request_id is not None

        done = control_plane.submit("jobs.examples:countdown", steps=1, delay=0)
        await done.result
        with pytest.raises(InvalidTransitionError) as refused:
            await client.pause(done.job_id)
        assert isinstance(refused.value, TransitionRejected)
        assert refused.value.code == "invalid_transition"
        assert (refused.value.command, refused.value.state) == ("pause", "completed")
        assert done.job_id in refused.value.message

        with pytest.raises(CommandRejected) as bad:
            await client.subscribe(["nowhere"])
        assert bad.value.code == "invalid_message" and "nowhere" in bad.value.message
        assert client.channels == []
        assert await client.ping() > 0


async def test_a_dropped_connection_resumes_the_stream_without_loss_or_duplicates(
    plane: Any,
) -> None:
    states: list[tuple[ConnectionState, float]] = []
    client = ControlPlaneClient(
        plane.ws_url,
        TOKEN,
        backoff_initial=0.01,  # so that the figure below is the resume itself
        on_state_change=lambda s: states.append((s, time.perf_counter())),
    )
    await client.connect()
    await client.subscribe(["jobs"])  # a second channel, resumed from its own cursor
    job = control_plane.submit("jobs.examples:countdown", steps=80, delay=0.02)
    drops: list[float] = []

    async def drop_now_and_then(event: dict[str, Any], seen: list[dict[str, Any]]) -> None:
        if event["type"] == "job.progress" and len(seen) % 12 == 0 and len(drops) < 5:
            drops.append(time.perf_counter())
            client._drop_connection_for_tests()

    events = await collect(client, [f"job:{job.job_id}"], job.job_id, on_event=drop_now_and_then)
    assert len(drops) == 5 and client.reconnects >= 5
    assert [(e["seq"], e["type"]) for e in events] == await hub_log(plane, job.job_id)
    assert client.gaps == 0 and client.recovered is True
    resumed = [
        next(t for s, t in states if s is ConnectionState.CONNECTED and t > dropped) - dropped
        for dropped in drops
    ]
    logger.info(
        "drop -> resumed stream: median %.0f ms (%s); %d duplicates dropped",
        1000 * statistics.median(resumed),
        ", ".join(f"{1000 * r:.0f}" for r in resumed),
        client.duplicates,
    )
    assert (
        seq_on(client.cursors["jobs"], job.job_id) >= events[-1]["seq"]
    )  # job.completed came through both
    assert client.channels == ["jobs"]  # the stream's own channel went with it
    await client.close()
    assert_nothing_left(client)


async def test_a_command_sent_while_reconnecting_waits_for_the_connection(plane: Any) -> None:
    job = control_plane.submit("jobs.examples:countdown", steps=1000, delay=0.01)
    async with ControlPlaneClient(plane.ws_url, TOKEN) as client:
        client._drop_connection_for_tests()
        reply = await client.pause(job.job_id)
        assert reply["status"]["state"] == "paused"
        assert client.reconnects >= 1 and client.state is ConnectionState.CONNECTED
        await client.cancel(job.job_id)


async def test_a_resume_the_hub_cannot_vouch_for_yields_a_gap_event(plane: Any) -> None:
    job = control_plane.submit("jobs.examples:countdown", steps=30, delay=0.02)
    async with ControlPlaneClient(plane.ws_url, TOKEN, backoff_initial=0.05) as client:
        real_epoch = client.epoch
        frames: list[dict[str, Any]] = []
        async with asyncio.timeout(60):
            async with aclosing(client.events([f"job:{job.job_id}"], since=0)) as stream:
                async for event in stream:
                    frames.append(event)
                    if event["type"] == "job.progress" and client.reconnects == 0:
                        client.epoch = "an-old-epoch"  # as if the hub restarted while we were away
                        client._drop_connection_for_tests()
                    if event["type"] in TERMINAL:
                        break
        gaps = [f for f in frames if f["type"] == "client.gap"]
        assert len(gaps) == 1 and client.gaps == 1 and client.recovered is False
        assert gaps[0]["data"]["channels"] == [f"job:{job.job_id}"]
        assert client.epoch == real_epoch
    events = [(f["seq"], f["type"]) for f in frames if f.get("seq") is not None]
    assert events == await hub_log(plane, job.job_id)


async def test_a_replay_is_delivered_in_order_and_measured(plane: Any) -> None:
    count = 5000
    job = control_plane.submit("jobs.examples:emit_burst", count=count, every=1000)
    assert await job.result == count
    async with ControlPlaneClient(plane.ws_url, TOKEN) as client:
        started = time.perf_counter()
        events = await collect(client, [f"job:{job.job_id}"], job.job_id)
        took = time.perf_counter() - started
    progress = [e for e in events if e["type"] == "job.progress"]
    assert len(progress) == count
    assert [e["seq"] for e in events] == sorted({e["seq"] for e in events})
    logger.info(
        "replayed %d events in %.2f s: %.0f events/s", len(events), took, len(events) / took
    )


def test_the_sync_client_streams_events_and_runs_commands(plane: Any) -> None:
    job = control_plane.submit("jobs.examples:countdown", steps=1000, delay=0.01)
    with SyncControlPlaneClient(plane.ws_url, TOKEN) as client:
        assert client.state is ConnectionState.CONNECTED
        seen: list[str] = []
        for event in client.events([f"job:{job.job_id}"], since=0):
            seen.append(event["type"])
            if event["type"] == "job.progress" and "job.paused" not in seen:
                assert client.pause(job.job_id)["status"]["state"] == "paused"
            elif event["type"] == "job.paused":
                assert client.cancel(job.job_id)["command"] == "cancel"
            elif event["type"] in TERMINAL:
                break
        assert seen[-1] == "job.cancelled"
        assert seen.index("job.paused") < seen.index("job.cancelled")
        with pytest.raises(JobNotFoundError):
            client.resume("no-such-job")
        assert client.ping() > 0
    assert client.state is ConnectionState.CLOSED


async def test_a_wrong_token_raises_unauthorized_and_is_not_retried(plane: Any) -> None:
    states: list[ConnectionState] = []
    client = ControlPlaneClient(
        plane.ws_url, "wrong-token", backoff_initial=0.01, on_state_change=states.append
    )
    with pytest.raises(Unauthorized) as refused:
        await client.connect()
    assert isinstance(refused.value, AuthError)
    assert refused.value.close_code == 4401
    assert client.reconnects == 0
    assert states == [ConnectionState.CONNECTING, ConnectionState.CLOSED]
    with pytest.raises(Unauthorized):
        await client.pause("any")
    assert_nothing_left(client)


async def test_a_client_that_cannot_connect_gives_up_after_its_open_timeout() -> None:
    states: list[ConnectionState] = []
    client = ControlPlaneClient(
        f"ws://127.0.0.1:{free_port()}/ws", TOKEN, open_timeout=0.5, on_state_change=states.append
    )
    with pytest.raises(RequestTimeout) as late:
        await client.connect()
    assert "not connected in time" in str(late.value) and client.reconnects >= 1
    assert states == [ConnectionState.CONNECTING, ConnectionState.CLOSED]
    assert_nothing_left(client)


async def test_the_client_suspends_a_saving_job_and_refuses_one_that_never_saved(
    plane: Any,
) -> None:
    plain = control_plane.submit("jobs.examples:countdown", steps=1000, delay=0.01)
    saving = control_plane.submit("jobs.examples:resumable_sum", steps=40, delay=0.05)
    async with ControlPlaneClient(plane.ws_url, TOKEN) as client:
        async with asyncio.timeout(60):
            while (await asyncio.to_thread(saving.status)).progress < 10:
                await asyncio.sleep(0.05)
        with pytest.raises(TransitionRejected) as refused:
            await client.suspend(plain.job_id)
        assert refused.value.code == "not_suspendable" and "ctx.save" in refused.value.message
        suspended = await client.suspend(saving.job_id)
        assert suspended["command"] == "suspend"
        assert suspended["status"]["state"] == "suspended"
        resumed = await client.resume(saving.job_id)
        assert resumed["status"]["state"] in ("pending", "running")
        await client.cancel(plain.job_id)
    value = await saving.result
    assert value["total"] == sum(range(40)) and value["runs"] == 2, value
    assert value["resumed_from"] >= 4, value
