"""The benchmark bench: one Ray with the control plane and the baseline app, result rows,
figures (percentiles, process memory) and a lean WebSocket client.

Every process the bench starts belongs to its own ``address="local"`` Ray, and
:meth:`Bench.stop` stops all of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import resource
import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import psutil
import websockets

import control_plane
from control_plane import JobHandle
from control_plane.actors import runtime

logger = logging.getLogger(__name__)

BASELINE_APP = "cp_bench_baseline"
BASELINE_PREFIX = "/cp-bench-baseline"
GATEWAY_TITLE = "ServeReplica:control_plane:gateway"
BASELINE_TITLE = f"ServeReplica:{BASELINE_APP}:baseline_socket"
TICK_MARK = '"bench.tick"'
PROGRESS_START = '{"type":"job.progress"'  # how every job.progress frame begins
SEQ_KEY = '"seq":'
RECEIVED = "_received"  # the key under which a kept frame records when it arrived (time.time())

Frame = dict[str, Any]


# --- rows ----------------------------------------------------------------------------------


@dataclass
class Row:
    """One figure beside its baseline. ``ratio`` is > 1 when we do better than the baseline:
    ``value / baseline_value`` when higher is better, ``baseline_value / value`` otherwise."""

    name: str
    value: float | None
    unit: str
    baseline: str
    baseline_value: float | None
    higher_is_better: bool = True

    @property
    def ratio(self) -> float | None:
        v, b = self.value, self.baseline_value
        if v is None or b is None or not math.isfinite(v) or not math.isfinite(b):
            return None
        if self.higher_is_better:
            return v / b if b else None
        return b / v if v else None

    def to_json(self) -> dict[str, Any]:
        ratio = self.ratio
        return {
            "name": self.name,
            "value": _rounded(self.value),
            "unit": self.unit,
            "baseline": self.baseline,
            "baseline_value": _rounded(self.baseline_value),
            "ratio": None if ratio is None else round(ratio, 3),
        }


def failed_row(scenario: str, error: BaseException) -> Row:
    """The row a scenario leaves when it fails: the error where the figure would be."""
    text = f"{type(error).__name__}: {error}".replace("\n", " ")[:300]
    return Row(f"{scenario}: FAILED ({text})", None, "", "", None)


def _rounded(x: float | None) -> float | None:
    if x is None or not math.isfinite(x):
        return None
    return float(f"{x:.4g}") if abs(x) < 1000 else round(x, 1)


# --- figures -------------------------------------------------------------------------------


def percentile(values: Iterable[float], p: float) -> float:
    """The ``p``-th percentile (0-100), interpolated between the nearest ranks; NaN for no
    values. An infinite value (a lost event) makes every percentile that reaches it infinite.
    """
    data = sorted(values)
    if not data:
        return math.nan
    rank = (len(data) - 1) * p / 100
    low = math.floor(rank)
    high = min(low + 1, len(data) - 1)
    frac = rank - low
    if frac == 0 or data[high] == data[low]:
        return data[low]
    if math.isinf(data[high]):
        return math.inf
    return data[low] + (data[high] - data[low]) * frac


def ms(seconds: float) -> float:
    return seconds * 1000.0


def latency_rows(
    name: Callable[[int], str],
    ours: Iterable[float],
    baseline: str,
    theirs: Iterable[float],
    baseline_p: int | None = None,
) -> list[Row]:
    """The p50 and p99 rows of latencies (seconds, reported in ms), each beside the same
    percentile of the baseline's, or beside its ``baseline_p`` percentile for both."""
    mine, base = list(ours), list(theirs)
    return [
        Row(
            name(p),
            ms(percentile(mine, p)),
            "ms",
            baseline,
            ms(percentile(base, baseline_p or p)),
            higher_is_better=False,
        )
        for p in (50, 99)
    ]


def processes(title: str) -> list[psutil.Process]:
    """Processes of this run's Ray (descendants of this driver) whose command line contains
    ``title`` (a Ray worker's command line is its process title, ``ray::JobActor`` ...).
    Other Ray instances on the machine are left out."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if any(title in part for part in proc.cmdline()):
                found.append(proc)
    return found


def one_process(title: str) -> psutil.Process:
    found = processes(title)
    if len(found) != 1:
        raise RuntimeError(f"expected one process titled {title!r}, found {len(found)}")
    return found[0]


def rss(proc: psutil.Process) -> int:
    return int(proc.memory_info().rss)


def uss(proc: psutil.Process) -> int:
    return int(proc.memory_full_info().uss)


async def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` (cheap, local) until true; raise TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.01)


# --- the WebSocket client ------------------------------------------------------------------


def tick_fields(text: str) -> tuple[int, float]:
    """``(s, t)`` of a tick frame: its ramp step and send time."""
    data = json.loads(text)["data"]
    return int(data["s"]), float(data["t"])


def frame_seq(text: str) -> int:
    """The ``seq`` of a frame in the hub's compact encoding, read without parsing the rest."""
    start = text.index(SEQ_KEY) + len(SEQ_KEY)
    return int(text[start : text.index(",", start)])


class Client:
    """One socket: reads every frame, times ``bench.tick`` frames, counts ``job.progress``.

    Tick frames are counted (and, while :attr:`recording`, timed) without being kept or
    fully parsed; progress frames leave only their ``seq`` and arrival time (in
    :attr:`progress_seqs` and :attr:`progress_at`); other frames are kept in :attr:`frames`
    for :meth:`wait_for`.

    It answers no application-level ping: the gateway sends none and relies on RFC 6455
    ping frames, which ``websockets`` answers by itself (the baselines send neither).
    """

    def __init__(self, ws: websockets.ClientConnection) -> None:
        self.ws = ws
        self.frames: list[Frame] = []
        self.ticks = 0
        self.first_tick_at = 0.0
        self.last_tick_at = 0.0
        self.recording = False
        self.samples: list[tuple[int, float]] = []  # (step, latency in seconds) of each tick
        self.progress_seqs: list[int] = []
        self.progress_at: list[float] = []  # time.time() each progress frame arrived
        self.close_code: int | None = None  # -1: ended without a close frame
        self.error: Exception | None = None
        self._new = asyncio.Event()
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def open(cls, url: str, token: str | None) -> Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        ws = await websockets.connect(
            url,
            additional_headers=headers,
            open_timeout=60,
            max_size=None,
            max_queue=None,
            ping_interval=None,
            compression=None,
        )
        return cls(ws)

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                now = time.time()
                text = raw if isinstance(raw, str) else raw.decode()
                if text.startswith(PROGRESS_START):  # first: the unpaced run's frames
                    self.progress_seqs.append(frame_seq(text))
                    self.progress_at.append(now)
                    continue
                if TICK_MARK in text:
                    if not self.ticks:
                        self.first_tick_at = now
                    self.ticks += 1
                    self.last_tick_at = now
                    if self.recording:
                        step, sent_at = tick_fields(text)
                        self.samples.append((step, now - sent_at))
                    continue
                frame = json.loads(text)
                frame[RECEIVED] = now
                self.frames.append(frame)
                self._new.set()
        except websockets.ConnectionClosed:
            pass
        except Exception as e:  # a broken reader must show, not look like a quiet socket
            self.error = e
            logger.warning("socket reader failed", exc_info=True)
        finally:
            self.close_code = self.ws.close_code if self.ws.close_code is not None else -1
            self._new.set()

    def latencies(self, step: int | None = None) -> list[float]:
        return [lat for s, lat in self.samples if step is None or s == step]

    async def send(self, message: Frame) -> None:
        await self.ws.send(json.dumps(message))

    async def wait_for(
        self, predicate: Callable[[Frame], bool], timeout: float = 30.0, start: int = 0
    ) -> Frame:
        """The first kept frame from index ``start`` on that satisfies ``predicate``."""
        seen = start
        async with asyncio.timeout(timeout):
            while True:
                for frame in self.frames[seen:]:
                    if predicate(frame):
                        return frame
                seen = max(seen, len(self.frames))
                if self.close_code is not None:
                    raise ConnectionError(
                        f"socket closed with code {self.close_code}"
                        + (f" ({self.error!r})" if self.error else "")
                    )
                self._new.clear()
                await self._new.wait()

    async def wait_type(
        self, event_type: str, job_id: str | None = None, timeout: float = 30.0, start: int = 0
    ) -> Frame:
        return await self.wait_for(
            lambda f: (
                f.get("type") == event_type
                and (job_id is None or f.get("data", {}).get("job_id") == job_id)
            ),
            timeout,
            start,
        )

    async def request(self, message: Frame, timeout: float = 30.0) -> Frame:
        """Send with a fresh id; return the ack or error that carries it."""
        request_id = secrets.token_hex(4)
        start = len(self.frames)
        await self.send({**message, "id": request_id})
        reply = await self.wait_for(
            lambda f: (
                f.get("type") in ("ack", "error")
                and f.get("data", {}).get("request_id") == request_id
            ),
            timeout,
            start,
        )
        if reply["type"] == "error":
            raise RuntimeError(f"{message['type']} refused: {reply['data']}")
        return reply

    async def subscribe(self, *channels: str, since: int | None = None) -> Frame:
        message: Frame = {"type": "subscribe", "channels": list(channels)}
        if since is not None:
            message["since"] = since
        return await self.request(message)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(), 10)
        self._reader.cancel()
        with contextlib.suppress(BaseException):
            await self._reader


async def open_many(url: str, token: str | None, count: int, parallel: int = 50) -> list[Client]:
    """Open ``count`` sockets, ``parallel`` handshakes at a time."""
    gate = asyncio.Semaphore(parallel)

    async def one() -> Client:
        async with gate:
            return await Client.open(url, token)

    return list(await asyncio.gather(*(one() for _ in range(count))))


async def close_all(clients: Iterable[Client]) -> None:
    await asyncio.gather(*(c.close() for c in clients))


def note(text: str) -> None:
    """A detail line under the scenario's heading."""
    print(f"    {text}", flush=True)


# --- jobs ----------------------------------------------------------------------------------


async def submit_started(bench: Bench, target: Any, jobs: int, **kwargs: Any) -> list[JobHandle]:
    """Submit ``jobs`` jobs and return once each has sent ``job.started``."""
    watcher = await Client.open(bench.ws_url, bench.token)
    try:
        await watcher.subscribe("jobs")
        handles = [
            await asyncio.to_thread(control_plane.submit, target, **kwargs) for _ in range(jobs)
        ]
        for handle in handles:
            await watcher.wait_type("job.started", handle.job_id, timeout=120)
        return handles
    finally:
        await watcher.close()


@contextlib.asynccontextmanager
async def pool_off() -> AsyncIterator[None]:
    """The controller's warm pool turned off meanwhile (and its idle workers gone): each job
    starts cold, its process started before its first event, as before the pool. A pool's
    refill starts a process (about a CPU-second) a second after each submit, in the middle
    of what an event scenario measures; the submit scenario measures the pool itself."""
    controller = runtime.controller()
    size = (await controller.pool_stats.remote())["size"]
    await controller.set_pool_size.remote(0)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            stats = await controller.pool_stats.remote()
            if not stats["idle"] and not stats["starting"]:
                break
            await asyncio.sleep(0.05)
        yield
    finally:
        await controller.set_pool_size.remote(size)


async def cancel_all(handles: list[JobHandle]) -> None:
    """Cancel jobs together; one that already ended is left as it is."""
    results = await asyncio.gather(
        *(asyncio.to_thread(h.cancel) for h in handles), return_exceptions=True
    )
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, Exception):
            raise result


# --- the bench: Ray, the control plane and the baseline app ---------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def raise_open_files_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


@dataclass
class Bench:
    """What every scenario uses: where the gateway and the baseline are, and how to get in."""

    ws_url: str
    baseline_url: str
    token: str
    dashboard_url: str
    port: int

    @classmethod
    def start(cls) -> Bench:
        import ray
        from ray import serve

        import control_plane
        from benchmarks import bodies

        raise_open_files_limit()
        # Job bodies and baseline pieces travel by value: workers need not import benchmarks.
        ray.cloudpickle.register_pickle_by_value(bodies)
        context = ray.init(
            address="local",
            num_cpus=2,
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            logging_level=logging.WARNING,
            log_to_driver=False,
        )
        token = "bench-" + secrets.token_hex(8)
        port = free_port()
        # The baselines are plain Serve apps behind Serve's own HTTP proxy, on its own port;
        # the gateway serves its port from its replica.
        baseline_port = free_port()
        serve.start(
            http_options={"host": "127.0.0.1", "port": baseline_port}, proxy_location="HeadOnly"
        )
        info = control_plane.start(port=port, token=token)
        serve.run(
            bodies.baseline_deployment.bind(), name=BASELINE_APP, route_prefix=BASELINE_PREFIX
        )
        dashboard = context.dashboard_url
        if not dashboard:
            raise RuntimeError("the Ray dashboard did not start (needed for Ray Jobs baselines)")
        return cls(
            ws_url=info.ws_url,
            baseline_url=f"ws://127.0.0.1:{baseline_port}{BASELINE_PREFIX}/ws",
            token=token,
            dashboard_url=dashboard if "://" in dashboard else f"http://{dashboard}",
            port=port,
        )

    def stop(self) -> None:
        stop()

    def jobs_client(self) -> Any:
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(self.dashboard_url)


def stop() -> None:
    """Stop the control plane, Serve and the bench's Ray (whatever of them runs)."""
    import ray
    from ray import serve

    import control_plane

    if not ray.is_initialized():
        return
    try:
        control_plane.stop()
    except Exception:
        logger.warning("control_plane.stop() failed", exc_info=True)
    with contextlib.suppress(Exception):
        serve.shutdown()
    ray.shutdown()


def other_ray_users() -> list[str]:
    """Other pytest or Ray processes on this machine: their load skews the figures."""
    mine = os.getpid()
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(proc.info.get("cmdline") or [])
        if proc.info["pid"] != mine and ("pytest" in cmdline or "gcs_server" in cmdline):
            found.append(f"{proc.info['pid']} {cmdline[:80]}")
    return found
