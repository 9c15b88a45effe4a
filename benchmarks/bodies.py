"""What the benchmarks run inside Ray: job bodies, and the bare pieces the baselines use.

``run.py`` registers this module with cloudpickle to be pickled by value, so job actors,
Serve replicas and the baseline actors never need to import ``benchmarks``.

Two WebSocket baselines push what a job pushes through us: a trivial Serve endpoint behind
Serve's HTTP proxy (:class:`BaselineSocket`), and a bare FastAPI app on uvicorn with the
gateway replica's own uvicorn settings (:class:`BarePush`), the server stack without us.

The baselines' actors and replicas put themselves at the nice value of the part of ours
they stand for (``core/priority.py``: the control plane's processes run at 0 where the OS
allows, Ray's workers at 15), so that no ratio comes from priority alone. Serve's own proxy
stays where Ray runs it.

Every timed event carries its send time ``t`` from ``time.time()``: all processes run on
one machine and read one clock, so ``receive time - t`` is the event's latency.

No ``from __future__ import annotations`` here: FastAPI reads the route annotations of the
baseline app, and they must be real objects, not strings, once pickled by value.
"""

import asyncio
import contextlib
import json
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import ray
from fastapi import FastAPI, WebSocket
from ray import serve

from control_plane.core import priority

TICK = "bench.tick"
DONE = '{"type":"bench.done"}'  # what a baseline sends after the last frame of a burst

# --- job bodies -------------------------------------------------------------------------------


async def pace(
    rates: list[float],
    step: float,
    send: Callable[[int, int], Awaitable[None]],
    checkpoint: Callable[[], Awaitable[None]] | None = None,
) -> int:
    """Call ``send(i, s)`` at ``rates[s]`` per second for ``step`` seconds each; return how
    many were sent. Sends what is due, then sleeps until the next is due."""
    sent = 0
    for s, rate in enumerate(rates):
        start = time.time()
        total = int(rate * step)
        n = 0
        while n < total:
            if checkpoint is not None:
                await checkpoint()
            due = min(total, int((time.time() - start) * rate) + 1)
            while n < due:
                await send(sent, s)
                n += 1
                sent += 1
            await asyncio.sleep(max(0.001, start + n / rate - time.time()))
    return sent


async def ticks(ctx: Any, rates: list[float], step: float, warmup: float = 0.0) -> int:
    """Emit ``bench.tick`` events at ``rates[0]`` per second for ``step`` seconds, then at
    ``rates[1]``, and so on; each carries its index ``i``, its step ``s`` and send time ``t``."""

    async def send(i: int, s: int) -> None:
        ctx.emit(TICK, i=i, s=s, t=time.time())

    await asyncio.sleep(warmup)
    return await pace(rates, step, send, ctx.checkpoint)


async def burst(ctx: Any, count: int, gate: Any = None) -> int:
    """``jobs.examples:emit_burst`` behind a gate: ``count`` progress events flat out, once
    ``gate.wait`` returns (so that several jobs start emitting together)."""
    if gate is not None:
        await gate.wait.remote()
    for i in range(count):
        if i % 1000 == 0:
            await ctx.checkpoint()
        ctx.progress(100 * (i + 1) / count)
    return count


async def idle(ctx: Any, period: float = 0.5) -> None:
    """Do nothing but reach a checkpoint every ``period`` seconds, until cancelled."""
    while True:
        await ctx.checkpoint()
        await asyncio.sleep(period)


async def finish_after(ctx: Any, seconds: float) -> dict[str, float]:
    """Complete after ``seconds``; the result says when, so a watcher can time the news."""
    deadline = time.time() + seconds
    while (left := deadline - time.time()) > 0:
        await ctx.checkpoint()
        await asyncio.sleep(min(left, 0.05))
    return {"done_at": time.time()}


# --- baseline: raw batched calls into a trivial actor ------------------------------------------


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def progress_event(job_id: str, i: int) -> dict[str, Any]:
    """An envelope shaped like the ones a job's ``ctx.progress`` emits."""
    return {
        "type": "job.progress",
        "timestamp": _now_iso(),
        "data": {"job_id": job_id, "status": "running", "progress": i % 100 + 0.5},
    }


class Counter:
    """The ingest baseline's receiver: it only counts."""

    def __init__(self) -> None:
        priority.favour_process()  # where the hub it stands for runs
        self.n = 0

    def add(self, batch: list[dict[str, Any]]) -> int:
        self.n += len(batch)
        return self.n

    def count(self) -> int:
        return self.n


class Publisher:
    """The ingest baseline's sender: the same batch, again and again, a few calls in flight."""

    def __init__(self) -> None:
        priority.favour_process()  # where a job actor's emitter runs

    def run(self, counter: Any, count: int, batch_size: int, in_flight: int) -> int:
        batch = [progress_event(f"baseline{os.getpid()}", i) for i in range(batch_size)]
        refs: deque[Any] = deque()
        sent = 0
        while sent < count:
            if len(refs) >= in_flight:
                ray.wait([refs.popleft()], num_returns=1, fetch_local=False)
            refs.append(counter.add.remote(batch))
            sent += batch_size
        ray.wait(list(refs), num_returns=len(refs), fetch_local=False)
        return sent


class Gate:
    """Holds every caller of ``wait`` until ``open`` is called."""

    def __init__(self) -> None:
        self._open = asyncio.Event()

    async def wait(self) -> bool:
        await self._open.wait()
        return True

    async def open(self) -> None:
        self._open.set()


class Bare:
    """The job baseline: a Ray actor with nothing in it."""

    def __init__(self) -> None:
        priority.favour_process()  # where a job actor runs

    def ready(self) -> int:
        return os.getpid()


# Ray's decorators hide the class from type checkers; the remote classes are typed Any.
CounterActor: Any = ray.remote(num_cpus=0)(Counter)
PublisherActor: Any = ray.remote(num_cpus=0)(Publisher)
GateActor: Any = ray.remote(num_cpus=0)(Gate)
BareActor: Any = ray.remote(num_cpus=0)(Bare)


# --- the frames the WebSocket baselines push ---------------------------------------------------


def progress_frames(
    count: int, job_id: str = "0b5e1ae1bea5", first_seq: int = 1_000_001
) -> list[str]:
    """``count`` ``job.progress`` frames, byte for byte what the gateway sends for a job's
    ``ctx.progress(p)``: the job's own encoder (``job_id`` as long as a job's), and ``seq``
    spliced in as the hub does it (``first_seq`` on, as many digits as a hub's after the
    ingest run). Made before a burst starts, so that pushing them costs the baseline
    nothing but the socket."""
    from control_plane.core.encoding import ProgressEncoder

    encoder = ProgressEncoder(job_id)
    frames = []
    for i in range(count):
        _, _, head, tail = encoder.encode(_now_iso(), "running", 100 * (i + 1) / count, None)
        frames.append(f'{head},"seq":{first_seq + i}{tail}')
    return frames


async def push_progress(websocket: WebSocket, count: int) -> None:
    """Push ``count`` progress frames as fast as the socket takes them, then ``DONE``."""
    for frame in progress_frames(count):
        await websocket.send_text(frame)
    await websocket.send_text(DONE)


# --- baseline: a trivial Serve WebSocket endpoint ---------------------------------------------


def tick_frame(i: int, s: int, t: float) -> str:
    """A frame shaped like the gateway's: the envelope of one ``bench.tick`` event."""
    return json.dumps(
        {
            "type": TICK,
            "timestamp": _now_iso(),
            "seq": i + 1,
            "channel": "job:baseline",
            "data": {"job_id": "baseline", "status": "running", "i": i, "s": s, "t": t},
        }
    )


baseline_app = FastAPI()


@serve.deployment(
    name="baseline_socket", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=20_000
)
@serve.ingress(baseline_app)
class BaselineSocket:
    """Pushes frames: a burst of ``job.progress`` frames unpaced, or ``bench.tick`` frames
    paced or broadcast to every socket.

    The first frame from the client says which: ``{"mode": "burst", "count": N}``,
    ``{"mode": "paced", "rates": [R, ...], "step": S}`` or ``{"mode": "fanout", "rate": R}``.
    """

    def __init__(self) -> None:
        priority.favour_process()  # where the gateway replica it stands for runs
        self._fanout: set[WebSocket] = set()
        self._ticker: asyncio.Task[None] | None = None

    @baseline_app.websocket("/ws")
    async def ws(self, websocket: WebSocket) -> None:
        await websocket.accept()
        cmd = json.loads(await websocket.receive_text())
        loop = asyncio.get_running_loop()
        sender: asyncio.Task[Any] | None = None
        if cmd["mode"] == "burst":
            sender = loop.create_task(push_progress(websocket, cmd["count"]))
        elif cmd["mode"] == "paced":

            async def send(i: int, s: int) -> None:
                await websocket.send_text(tick_frame(i, s, time.time()))

            sender = loop.create_task(pace(cmd["rates"], cmd["step"], send))
        else:
            self._fanout.add(websocket)
            if self._ticker is None or self._ticker.done():
                self._ticker = loop.create_task(self._tick(cmd["rate"]))
        await websocket.send_text(json.dumps({"type": "ack"}))
        try:
            while True:  # until the client goes
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
        finally:
            self._fanout.discard(websocket)
            if sender is not None:
                sender.cancel()
            if not self._fanout and self._ticker is not None:
                self._ticker.cancel()
                self._ticker = None

    async def _tick(self, rate: float) -> None:
        """One frame for every fan-out socket, made once, like the hub makes it once."""
        i = 0
        start = time.time()
        while True:
            frame = tick_frame(i, 0, time.time())
            for websocket in list(self._fanout):
                with contextlib.suppress(Exception):
                    await websocket.send_text(frame)
            i += 1
            await asyncio.sleep(max(0.0, start + i / rate - time.time()))


baseline_deployment: Any = BaselineSocket


# --- baseline: the same server stack without us -----------------------------------------------


def bare_push_app(fanout_rate: float = 1.0) -> FastAPI:
    """A FastAPI app with one WebSocket route: the client's first frame
    ``{"mode": "burst", "count": N}`` gets N ``job.progress`` frames pushed unpaced; a
    first frame ``{"type": "subscribe", ...}`` (what our clients send) gets an ``ack`` and
    then ``bench.tick`` frames, ``fanout_rate`` a second, each made once and sent to every
    socket that subscribed, as the trivial Serve endpoint's fan-out does."""
    app = FastAPI()
    fanout: set[WebSocket] = set()
    ticker: list[asyncio.Task[None]] = []

    async def tick() -> None:
        i, start = 0, time.time()
        while True:
            frame = tick_frame(i, 0, time.time())
            for websocket in list(fanout):
                with contextlib.suppress(Exception):
                    await websocket.send_text(frame)
            i += 1
            await asyncio.sleep(max(0.0, start + i / fanout_rate - time.time()))

    @app.websocket("/ws")
    async def push(websocket: WebSocket) -> None:
        await websocket.accept()
        cmd = json.loads(await websocket.receive_text())
        sender = None
        if cmd.get("type") == "subscribe":
            ack = {"type": "ack", "data": {"request_id": cmd.get("id")}}
            await websocket.send_text(json.dumps(ack, separators=(",", ":")))
            fanout.add(websocket)
            if not ticker or ticker[0].done():
                ticker[:] = [asyncio.get_running_loop().create_task(tick())]
        else:
            sender = asyncio.get_running_loop().create_task(push_progress(websocket, cmd["count"]))
        try:
            while True:  # until the client goes, as the Serve baseline does
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
        finally:
            fanout.discard(websocket)
            if sender is not None:
                sender.cancel()
            if not fanout and ticker:
                ticker.pop().cancel()

    return app


class BarePush:
    """Serves :func:`bare_push_app` on a loopback port from its own process, with the
    gateway replica's uvicorn: :class:`~control_plane.gateway.replica_server.ReplicaServer`
    holds the settings (``ws="websockets-sansio"``, no per-message deflate, ...), so the
    baseline keeps them whatever they become. No Serve, no hub, no manager."""

    def __init__(self) -> None:
        priority.favour_process()  # where the gateway replica it stands for runs
        self._server: Any = None

    async def start(self, fanout_rate: float = 1.0) -> int:
        """Listen and serve; returns the port."""
        from control_plane.gateway.replica_server import ReplicaServer, raise_open_files_limit

        raise_open_files_limit()
        self._server = ReplicaServer(bare_push_app(fanout_rate), "127.0.0.1", 0)
        self._server.start()
        return int(self._server.port)

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop()


BarePushActor: Any = ray.remote(num_cpus=0)(BarePush)
