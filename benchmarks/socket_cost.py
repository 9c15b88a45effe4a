"""What one socket costs a gateway replica, without Ray: memory per idle socket (by
allocation site) and CPU per event per socket in the fan-out.

    python -m benchmarks.socket_cost [--sockets N] [--seconds S] [--rate R] [--trace]

This process plays the gateway replica: the gateway's own uvicorn settings
(:class:`~control_plane.gateway.replica_server.ReplicaServer`), a ``WebSocketManager`` and
its hub reader over an in-process :class:`~control_plane.core.hub_log.EventLog` (the hub's
real log). Clients run in processes of their own (:mod:`benchmarks.fanout_clients`), all on
one channel; ``R`` ``bench.tick`` events a second go to it for ``S`` seconds. Printed: RSS
growth per socket, CPU seconds of this process per event per socket, the latencies, and
with ``--trace`` the allocation sites (tracemalloc, file:line) that hold the sockets'
memory. It is how the figures in ``manager.py``'s docstring were taken; ``run.py``'s
fan-out scenario measures the real replica on Ray.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import time
import tracemalloc
from typing import Any

import psutil
from fastapi import FastAPI, WebSocket

from benchmarks.fanout_clients import ClientFleet, raise_open_files_limit
from benchmarks.harness import percentile
from control_plane.core.local_hub import LocalHub
from control_plane.core.protocol import make_event
from control_plane.gateway.manager import WebSocketManager
from control_plane.gateway.replica_server import ReplicaServer
from control_plane.gateway.session import SocketConfig

CHANNEL = "job:costjob"


class TickHub(LocalHub):
    """The hub's ``HubPort`` over an in-process log, and the job that ticks into it."""

    def __init__(self) -> None:
        super().__init__(capacity=100_000)

    def tick(self, i: int) -> None:
        data = {"job_id": "costjob", "status": "running", "i": i, "s": 0, "t": time.time()}
        self.log.append([make_event("bench.tick", data)])


def _cpu(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def _site(traceback: tracemalloc.Traceback) -> str:
    """Where an allocation comes from: our innermost frame (what of ours made it), else
    the innermost frame of the library."""
    frames = list(traceback)  # oldest first
    for frame in reversed(frames):
        if f"{os.sep}control_plane{os.sep}" in frame.filename:
            name = frame.filename.split(f"{os.sep}control_plane{os.sep}")[-1]
            last = frames[-1]
            lib = os.sep.join(last.filename.split(os.sep)[-2:])
            return f"control_plane/{name}:{frame.lineno} -> {lib}:{last.lineno}"
    last = frames[-1]
    return f"{os.sep.join(last.filename.split(os.sep)[-3:])}:{last.lineno}"


LAYERS = ("uvicorn", "websockets", "starlette", "fastapi", "pydantic", "asyncio")


def _layer(traceback: tracemalloc.Traceback) -> str:
    """Which layer holds an allocation: ours when any of our frames made it (by module),
    else the library of its innermost frame."""
    for frame in reversed(list(traceback)):
        if f"{os.sep}control_plane{os.sep}" in frame.filename:
            return "ours: " + frame.filename.split(f"{os.sep}control_plane{os.sep}")[-1]
    name = traceback[-1].filename
    for layer in LAYERS:
        if f"{os.sep}{layer}{os.sep}" in name:
            return layer
    return "other: " + os.path.basename(name)


async def _serve(manager: WebSocketManager, websocket: WebSocket) -> None:
    await manager.serve(websocket)


async def measure(sockets: int, seconds: float, rate: float, trace: bool, procs: int) -> None:
    print(f"RLIMIT_NOFILE soft {raise_open_files_limit()}")
    hub = TickHub()
    manager = WebSocketManager()
    manager.configure(SocketConfig(max_connections=max(10_000, sockets)), hub)
    manager.start()
    handler = functools.partial(_serve, manager)
    try:
        server = ReplicaServer(FastAPI(), "127.0.0.1", 0, sockets={"/ws": handler})
    except TypeError:  # a version before direct socket routes: through FastAPI
        app = FastAPI()
        app.add_api_websocket_route("/ws", handler)
        server = ReplicaServer(app, "127.0.0.1", 0)
    server.start()
    me = psutil.Process()
    await asyncio.sleep(0.5)
    if trace:
        tracemalloc.start(8)
    before = me.memory_info().rss
    snap0 = tracemalloc.take_snapshot() if trace else None
    fleet = ClientFleet(f"ws://127.0.0.1:{server.port}/ws", sockets, CHANNEL, None, procs)
    t0 = time.monotonic()
    await fleet.start(timeout=600)
    await asyncio.sleep(1.0)
    grown = me.memory_info().rss - before
    print(f"{sockets} sockets open and subscribed in {time.monotonic() - t0:.1f} s")
    print(f"RSS growth per idle socket: {grown / sockets / 1024:.1f} KB")
    if snap0 is not None:
        snap1 = tracemalloc.take_snapshot()
        stats = snap1.compare_to(snap0, "traceback")
        total = sum(s.size_diff for s in stats)
        print(f"tracemalloc: {total / sockets / 1024:.1f} KB per socket in Python objects")
        by_site: dict[str, list[int]] = {}
        for s in stats:
            site = _site(s.traceback)
            acc = by_site.setdefault(site, [0, 0])
            acc[0] += s.size_diff
            acc[1] += s.count_diff
        by_layer: dict[str, int] = {}
        for s in stats:
            layer = _layer(s.traceback)
            by_layer[layer] = by_layer.get(layer, 0) + s.size_diff
        for layer, size in sorted(by_layer.items(), key=lambda kv: -kv[1]):
            print(f"  {size / sockets:8.0f} B/socket  {layer}")
        ranked = sorted(by_site.items(), key=lambda kv: -kv[1][0])
        for site, (size, count) in ranked[:60]:
            print(f"  {size / sockets:8.0f} B/socket {count / sockets:6.1f} blocks  {site}")
        tracemalloc.stop()
    deliver, spent = manager.deliver, [0.0]

    def timed_deliver(entries: Any) -> None:
        t = time.thread_time()  # CPU: on a shared machine wall time counts others' work
        deliver(entries)
        spent[0] += time.thread_time() - t

    manager.deliver = timed_deliver  # type: ignore[method-assign]
    manager._reader()._on_entries = timed_deliver
    events = int(seconds * rate)
    # The same window idle first: what the process spends anyway (pings, timers, the loop).
    cpu0 = _cpu(me)
    await asyncio.sleep(events / rate + 1.0)
    idle = _cpu(me) - cpu0
    await fleet.record()
    cpu0 = _cpu(me)
    start = time.time()
    for i in range(events):
        hub.tick(i)
        await asyncio.sleep(max(0.0, start + (i + 1) / rate - time.time()))
    await asyncio.sleep(1.0)
    cpu = _cpu(me) - cpu0
    result = await fleet.stop()
    lat = result["latencies"]
    per = max(1, events * sockets)
    print(
        f"{events} events x {sockets} sockets: {cpu:.2f} CPU s ({idle:.2f} s idle), "
        f"{(cpu - idle) / per * 1e6:.1f} us per event per socket above idle, "
        f"{spent[0] / per * 1e6:.1f} us of it in deliver(); {len(lat)} timed, "
        f"p50 {percentile(lat, 50) * 1000:.1f} ms, p99 {percentile(lat, 99) * 1000:.1f} ms; "
        f"closed {result['closed']} {result['codes']}"
    )
    after = (me.memory_info().rss - before) / sockets / 1024
    print(f"RSS growth per socket after the events: {after:.1f} KB")
    await manager.close_all()
    await server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sockets", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=1.0)
    parser.add_argument("--procs", type=int, default=1)
    parser.add_argument("--trace", action="store_true")
    a = parser.parse_args()
    asyncio.run(measure(a.sockets, a.seconds, a.rate, a.trace, a.procs))
