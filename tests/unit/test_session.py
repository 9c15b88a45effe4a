"""Sessions and the seed's manager over a fake socket and the hub's real log (no Ray, no
network): plain clients stay, slow ones are closed, one reader however many connect."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from starlette.websockets import WebSocketState

from control_plane.core.hub_log import EventLog
from control_plane.core.protocol import CloseCode
from control_plane.core.seam import MergeState
from control_plane.gateway.manager import WebSocketManager
from control_plane.gateway.session import SocketConfig
from tests.unit.hubfake import LogHub


class FakeTransport:
    def __init__(self) -> None:
        self.aborted = False

    def abort(self) -> None:
        self.aborted = True


class FakeServerProtocol:
    """Stands where uvicorn's protocol is: the bound ``send`` leads to its transport."""

    def __init__(self) -> None:
        self.transport = FakeTransport()

    async def send(self, message: dict[str, Any]) -> None:  # pragma: no cover - not called
        raise AssertionError(message)


class FakeSocket:
    """The parts of starlette's WebSocket a session uses. ``reading`` cleared: the peer
    reads nothing, so sends (and the close frame) wait, as uvicorn's do."""

    def __init__(self) -> None:
        self.client_state = WebSocketState.CONNECTING
        self.application_state = WebSocketState.CONNECTING
        self.incoming: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.sent: list[dict[str, Any]] = []
        self.closed: tuple[int, str] | None = None
        self.reading = asyncio.Event()
        self.reading.set()
        self.gate: asyncio.Semaphore | None = None  # set: the peer reads a frame per release
        self.frame_sent = asyncio.Event()
        self._protocol = FakeServerProtocol()
        self._send = self._protocol.send

    async def accept(self) -> None:
        self.client_state = self.application_state = WebSocketState.CONNECTED

    async def receive(self) -> dict[str, Any]:
        return await self.incoming.get()

    async def send_text(self, text: str) -> None:
        await self.reading.wait()
        if self.gate is not None:
            await self.gate.acquire()
        self.sent.append(json.loads(text))
        self.frame_sent.set()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self.reading.wait()
        self.closed = (code, reason)
        self.application_state = WebSocketState.DISCONNECTED
        self.incoming.put_nowait({"type": "websocket.disconnect", "code": code})

    def say(self, message: dict[str, Any] | str) -> None:
        text = message if isinstance(message, str) else json.dumps(message)
        self.incoming.put_nowait({"type": "websocket.receive", "text": text})

    def hang_up(self) -> None:
        self.incoming.put_nowait({"type": "websocket.disconnect", "code": 1001})

    @property
    def aborted(self) -> bool:
        return self._protocol.transport.aborted

    def events(self) -> list[dict[str, Any]]:
        return [f for f in self.sent if "seq" in f]

    async def wait_for(self, predicate: Any, timeout: float = 5.0) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                for frame in self.sent:
                    if predicate(frame):
                        return frame
                self.frame_sent.clear()
                await self.frame_sent.wait()


CONFIG = SocketConfig(
    send_queue_size=8,
    max_lag=0.3,
    subscribe_deadline=0.5,
    close_timeout=0.3,
    max_frame_bytes=1024,
)


@pytest.fixture
async def hub() -> LogHub:
    return LogHub(EventLog(capacity=10_000, epoch="e"))


@pytest.fixture
async def manager(hub: LogHub) -> AsyncIterator[WebSocketManager]:
    m = WebSocketManager()
    m.configure(CONFIG, hub)
    m.start()
    yield m
    await m.close_all()


async def open_socket(manager: WebSocketManager, client_id: str) -> tuple[FakeSocket, Any]:
    ws = FakeSocket()
    task = asyncio.ensure_future(manager.serve(ws, client_id))  # type: ignore[arg-type]
    await ws.wait_for(lambda f: f["type"] == "welcome")
    return ws, task


async def subscribe(ws: FakeSocket, *channels: str, since: int | None = None) -> dict[str, Any]:
    msg: dict[str, Any] = {"type": "subscribe", "channels": list(channels), "id": "s"}
    if since is not None:
        msg["since"] = since
    ws.sent.clear()
    ws.say(msg)
    return await ws.wait_for(lambda f: f["type"] == "ack")


async def test_a_plain_client_that_only_reads_stays_open_and_is_sent_no_pings(manager, hub):
    ws, task = await open_socket(manager, "plain")
    await subscribe(ws, "job:a")
    await asyncio.sleep(4 * CONFIG.max_lag)  # several watchdog rounds with nothing to say
    seqs = hub.emit("a", 3)
    await ws.wait_for(lambda f: f.get("seq") == seqs[-1])
    assert ws.closed is None and not task.done()
    assert [f["seq"] for f in ws.events()] == seqs
    assert not [f for f in ws.sent if f["type"] == "ping"]


async def test_fifty_sockets_connecting_at_once_share_one_reader_and_get_each_event_once(hub):
    manager = WebSocketManager()
    manager.configure(CONFIG, hub)
    hub.head_gate = asyncio.Event()  # all fifty connect while the reader's start is out
    sockets = [FakeSocket() for _ in range(50)]
    tasks = [
        asyncio.ensure_future(manager.serve(ws, f"c{i}"))  # type: ignore[arg-type]
        for i, ws in enumerate(sockets)
    ]
    await asyncio.sleep(0.01)
    hub.head_gate.set()
    try:
        for ws in sockets:
            await ws.wait_for(lambda f: f["type"] == "welcome")
            await subscribe(ws, "job:a")
        seqs = hub.emit("a", 6)
        for ws in sockets:
            await ws.wait_for(lambda f: f.get("seq") == seqs[-1])
            assert [f["seq"] for f in ws.events()] == seqs
        assert hub.calls["head"] == 1
    finally:
        await manager.close_all()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_client_whose_queue_overflows_is_closed_as_slow_and_aborted_if_it_reads_nothing(
    manager, hub
):
    ws, task = await open_socket(manager, "slow")
    await subscribe(ws, "job:a")
    ws.reading.clear()  # from here on, the peer reads nothing
    hub.emit("a", 1)
    await asyncio.sleep(0.05)  # the writer is stuck on that one
    hub.emit("a", CONFIG.send_queue_size + 1)
    await asyncio.wait_for(task, 5)
    assert ws.aborted  # its close frame could not go out either
    assert manager.slow_closed == 1 and "slow" not in manager.sessions


async def test_a_slow_client_that_reads_again_gets_the_close_code_4008(manager, hub):
    ws, task = await open_socket(manager, "slow2")
    await subscribe(ws, "job:a")
    ws.reading.clear()
    hub.emit("a", CONFIG.send_queue_size + 4)
    async with asyncio.timeout(5):
        while manager.slow_closed == 0:
            await asyncio.sleep(0.01)
    ws.reading.set()  # it reads again before the close times out
    await asyncio.wait_for(task, 5)
    assert ws.closed == (CloseCode.SLOW_CONSUMER, "slow consumer") and not ws.aborted


async def test_a_send_stuck_past_max_lag_closes_the_socket_even_with_few_events(manager, hub):
    ws, task = await open_socket(manager, "stuck")
    await subscribe(ws, "job:a")
    ws.reading.clear()
    hub.emit("a", 2)  # far from overflowing the queue
    await asyncio.wait_for(task, 5)
    assert manager.slow_closed == 1


async def test_a_socket_that_never_subscribes_is_closed_with_4001(manager):
    ws, task = await open_socket(manager, "idle")
    await asyncio.wait_for(task, 5)
    assert ws.closed is not None and ws.closed[0] == CloseCode.NO_SUBSCRIBE


async def test_a_frame_over_the_limit_closes_with_1009(manager):
    ws, task = await open_socket(manager, "big")
    ws.say("x" * 2000)
    await asyncio.wait_for(task, 5)
    assert ws.closed is not None and ws.closed[0] == CloseCode.TOO_BIG


async def test_a_bad_frame_gets_an_error_and_the_socket_carries_on(manager, hub):
    ws, task = await open_socket(manager, "bad")
    ws.say("{not json")
    error = await ws.wait_for(lambda f: f["type"] == "error")
    assert error["data"]["code"] == "invalid_json"
    await subscribe(ws, "job:a")
    seqs = hub.emit("a", 1)
    await ws.wait_for(lambda f: f.get("seq") == seqs[0])
    assert not task.done()


async def test_a_subscribe_with_since_replays_then_goes_live_each_seq_once(manager, hub):
    before = hub.emit("a", 5)
    ws, _ = await open_socket(manager, "resume")
    ack = await subscribe(ws, "job:a", since=before[1])
    assert ack["data"]["recovered"] is True
    after = hub.emit("a", 3)
    await ws.wait_for(lambda f: f.get("seq") == after[-1])
    got = [f["seq"] for f in ws.events()]
    others = hub.emit("b", 2)
    await subscribe(ws, "*", since=0)  # a wider channel from the start: only what is new
    await ws.wait_for(lambda f: f.get("seq") == others[-1])
    await asyncio.sleep(0.05)
    got += [f["seq"] for f in ws.events()]
    # Nothing it said it had (up to since on job:a), nothing twice, job:b's from the start.
    assert got == before[2:] + after + others


async def test_a_subscribe_without_since_sends_the_snapshot_before_any_live_event(hub):
    # The snapshot comes from the controller while the reader goes on: an event of the job
    # that arrives meanwhile waits behind the snapshot and the ack.
    fetching, release = asyncio.Event(), asyncio.Event()

    async def snapshots(job_id: str) -> dict[str, Any]:
        fetching.set()
        await release.wait()
        return {"job_id": job_id, "status": "running", "seq": 0}

    manager = WebSocketManager()
    manager.configure(CONFIG, hub, snapshots=snapshots)
    manager.start()
    try:
        ws, _ = await open_socket(manager, "fresh")
        ws.sent.clear()
        ws.say({"type": "subscribe", "channels": ["job:a"], "id": "s"})
        await fetching.wait()
        seqs = hub.emit("a", 3)
        await asyncio.sleep(0.05)  # the reader has offered them by now
        release.set()
        await ws.wait_for(lambda f: f.get("seq") == seqs[-1])
        assert [f["type"] for f in ws.sent] == ["job.snapshot", "ack"] + ["job.progress"] * 3
        assert [f["seq"] for f in ws.events()] == seqs
    finally:
        await manager.close_all()


async def test_a_since_ahead_of_a_lagging_reader_sends_nothing_the_client_had(manager, hub):
    # The replica's reader takes nothing of job:c, so its cursor stays behind the hub's head.
    ws, _ = await open_socket(manager, "ahead")
    had = hub.emit("c", 4)
    await subscribe(ws, "job:c", since=had[-1])
    new = hub.emit("c", 2)
    await ws.wait_for(lambda f: f.get("seq") == new[-1])
    assert [f["seq"] for f in ws.events()] == new


async def test_a_client_id_used_again_replaces_the_older_socket(manager):
    old, old_task = await open_socket(manager, "same")
    new, _ = await open_socket(manager, "same")
    await asyncio.wait_for(old_task, 5)
    assert old.closed == (CloseCode.NORMAL, "replaced by a new connection")
    assert manager.sessions["same"].websocket is new


async def test_a_client_that_hangs_up_is_forgotten_and_its_channels_leave_the_filter(manager):
    ws, task = await open_socket(manager, "gone")
    await subscribe(ws, "job:zz")
    assert "job:zz" in manager.reader.wanted.channels
    ws.hang_up()
    await asyncio.wait_for(task, 5)
    assert "gone" not in manager.sessions
    assert "job:zz" not in manager.reader.wanted.channels


async def test_a_client_slower_than_its_events_catches_up_from_the_history_each_seq_once(
    manager, hub
):
    ws, task = await open_socket(manager, "reader")
    await subscribe(ws, "job:a", "system")
    ws.reading.clear()
    seqs = []
    for _ in range(10):  # ten queues' worth while it reads nothing, with others between
        seqs += hub.emit("a", CONFIG.send_queue_size)
        hub.emit("b", 3)
        await asyncio.sleep(0.01)
    ws.reading.set()  # it reads again, well within max_lag
    await ws.wait_for(lambda f: f.get("seq") == seqs[-1], timeout=10)
    assert [f["seq"] for f in ws.events()] == seqs
    assert manager.catch_ups >= 1 and manager.slow_closed == 0 and not task.done()
    later = hub.emit("a", 2)  # live again
    await ws.wait_for(lambda f: f.get("seq") == later[-1])
    assert [f["seq"] for f in ws.events()][-2:] == later


async def test_events_that_pile_up_behind_the_last_round_send_it_back_to_the_history(manager, hub):
    """A burst that comes while the last round of history drains (the client reads slower
    than the events come) is not held: 16 queues' worth of it closed the socket as slow."""
    ws, task = await open_socket(manager, "bursty")
    await subscribe(ws, "job:a")
    ws.gate = asyncio.Semaphore(0)
    seqs = hub.emit("a", 5 * CONFIG.send_queue_size)  # it falls behind and catches up ...
    seam = manager.sessions["bursty"].seam
    for _ in range(200):  # ... a frame at a time, until the last round drains
        if seam.merge.state is MergeState.DRAINING:  # (no replay of a subscribe here)
            break
        ws.gate.release()
        await asyncio.sleep(0.01)
    assert seam.merge.state is MergeState.DRAINING
    for _ in range(5):  # a burst of 25 queues' worth arrives meanwhile
        seqs += hub.emit("a", 5 * CONFIG.send_queue_size)
        await asyncio.sleep(0.02)
    assert manager.slow_closed == 0 and len(seam.merge) <= CONFIG.send_queue_size
    gate, ws.gate = ws.gate, None  # it reads at full speed again
    gate.release()
    await ws.wait_for(lambda f: f.get("seq") == seqs[-1], timeout=10)
    assert [f["seq"] for f in ws.events()] == seqs
    assert manager.catch_ups == 1 and manager.slow_closed == 0 and not task.done()
    later = hub.emit("a", 2)  # live again
    await ws.wait_for(lambda f: f.get("seq") == later[-1])
    assert [f["seq"] for f in ws.events()][-2:] == later and not seam.rejoining


async def test_events_that_pile_up_behind_a_subscribes_replay_send_it_to_the_history(manager, hub):
    """A client reading slower than the events come while its subscribe's replay drains
    goes on from the history once the replay is out: more than 16 queues' worth held
    behind the drain closed it as slow (4008) although the history had every entry."""
    watcher, _ = await open_socket(manager, "watcher")
    await subscribe(watcher, "job:a")  # the replica's reader takes job:a from now on
    seqs = hub.emit("a", 3 * CONFIG.send_queue_size)
    await watcher.wait_for(lambda f: f.get("seq") == seqs[-1])  # they come by the replay:
    ws, task = await open_socket(manager, "resuming")  # the reader is past them
    ws.gate = asyncio.Semaphore(0)
    ws.say({"type": "subscribe", "channels": ["job:a"], "id": "s", "since": 0})
    seam = manager.sessions["resuming"].seam
    async with asyncio.timeout(5):
        while seam.merge.state is not MergeState.DRAINING:
            await asyncio.sleep(0.01)
        replayed = seqs[-1]
        seqs += hub.emit("a", 3 * CONFIG.send_queue_size)  # held behind the replay
        while not any(f.get("seq") == replayed for f in ws.sent):  # it reads the replay
            ws.gate.release()
            await asyncio.sleep(0.005)
    await asyncio.sleep(0.05)  # the drain queues what was held behind it, as room allows
    assert seam.merge.state is MergeState.DRAINING
    seqs += hub.emit("a", 20 * CONFIG.send_queue_size)  # then 20 queues' worth come
    await asyncio.sleep(0.1)
    assert manager.slow_closed == 0 and not task.done()
    gate, ws.gate = ws.gate, None  # it reads at full speed again
    gate.release()
    await ws.wait_for(lambda f: f.get("seq") == seqs[-1], timeout=10)
    assert [f["seq"] for f in ws.events()] == seqs
    assert manager.slow_closed == 0 and not task.done()
    later = hub.emit("a", 2)  # live again
    await ws.wait_for(lambda f: f.get("seq") == later[-1])
    assert [f["seq"] for f in ws.events()][-2:] == later and not seam.rejoining


async def test_a_client_the_history_left_behind_is_closed_as_slow() -> None:
    hub = LogHub(EventLog(capacity=30, epoch="small"))
    manager = WebSocketManager()
    manager.configure(SocketConfig(send_queue_size=4, max_lag=2.0, close_timeout=0.5), hub)
    manager.start()
    try:
        ws, task = await open_socket(manager, "left")
        await subscribe(ws, "job:a")
        ws.reading.clear()
        hub.emit("a", 20)
        await asyncio.sleep(0.05)
        for _ in range(20):  # far past what the history keeps; the reader keeps up
            hub.emit("a", 10)
            await asyncio.sleep(0.01)
        ws.reading.set()
        await asyncio.wait_for(task, 5)
        assert ws.closed == (CloseCode.SLOW_CONSUMER, "slow consumer")
        assert manager.catch_ups == 1 and manager.slow_closed == 1
    finally:
        await manager.close_all()
