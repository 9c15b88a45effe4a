"""Many WebSocket clients in processes of their own: the client side of the fan-out runs.

    python -m benchmarks.fanout_clients URL COUNT CHANNEL [--token T]

With 10,000 sockets the clients' own CPU (parsing frames, timing ticks) would starve the
replica if they ran on the benchmark's event loop, so :class:`ClientFleet` starts one or
more of these processes, each holding ``COUNT`` raw ``websockets`` clients. A process opens
its sockets (50 handshakes at a time), subscribes each to ``CHANNEL``, prints ``ready``,
then obeys lines on stdin: ``record`` starts timing ``bench.tick`` frames (latency = arrival
- the tick's ``t``), ``stop`` ends it, closes the sockets and prints one JSON line
``{"latencies": [...], "closed": n, "codes": [...], "ticks": n, "retries": n}`` (retries:
opening handshakes that timed out and were tried again).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import sys
import time
from typing import Any

import websockets

TICK_MARK = '"bench.tick"'
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPEN_PARALLEL = 50
OPEN_TIMEOUT = 60.0  # seconds for one opening handshake
OPEN_TRIES = 3  # a handshake that times out is tried again (counted in the result)


def raise_open_files_limit() -> int:
    """The soft RLIMIT_NOFILE raised to the hard one; returns the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard or hard == resource.RLIM_INFINITY:
        wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class _Socket:
    __slots__ = ("code", "samples", "ticks", "ws")

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.ticks = 0
        self.samples: list[float] = []
        self.code: int | None = None


async def _open(url: str, headers: dict[str, str]) -> Any:
    return await websockets.connect(
        url,
        additional_headers=headers,
        open_timeout=OPEN_TIMEOUT,
        max_size=None,
        ping_interval=None,
        compression=None,
    )


async def _subscribe(ws: Any, channel: str) -> None:
    await ws.send(json.dumps({"type": "subscribe", "channels": [channel], "id": "s"}))
    while True:
        text = await ws.recv()
        if '"ack"' in text and '"request_id":"s"' in text.replace(" ", ""):
            return
        if '"error"' in text and '"request_id":"s"' in text.replace(" ", ""):
            raise RuntimeError(f"subscribe refused: {text}")


async def _read(sock: _Socket, recording: list[bool]) -> None:
    try:
        async for raw in sock.ws:
            if TICK_MARK not in raw:
                continue
            sock.ticks += 1
            if recording[0]:
                now = time.time()
                data = json.loads(raw)["data"]
                sock.samples.append(now - float(data["t"]))
    except websockets.ConnectionClosed:
        pass
    finally:
        sock.code = sock.ws.close_code if sock.ws.close_code is not None else -1


async def main(url: str, count: int, channel: str, token: str | None) -> None:
    raise_open_files_limit()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    gate = asyncio.Semaphore(OPEN_PARALLEL)
    socks: list[_Socket] = []
    recording = [False]
    readers: list[asyncio.Task[None]] = []
    retries = [0]

    async def opened() -> Any:
        for _ in range(OPEN_TRIES - 1):
            try:
                return await _open(url, headers)
            except TimeoutError:
                retries[0] += 1
        return await _open(url, headers)

    async def join() -> None:
        # Each socket subscribes as soon as it is open: the gateway closes one that has
        # not subscribed within a minute (4001), and 10,000 take longer than that to open.
        async with gate:
            sock = _Socket(await opened())
            socks.append(sock)
            await _subscribe(sock.ws, channel)
        readers.append(asyncio.get_running_loop().create_task(_read(sock, recording)))

    await asyncio.gather(*(join() for _ in range(count)))
    conns = [s.ws for s in socks]
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    while True:
        line = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
        if line == "record":
            recording[0] = True
        elif line in ("stop", ""):
            break
    recording[0] = False
    closed = [s.code for s in socks if s.code is not None]
    latencies = [lat for s in socks for lat in s.samples]
    ticks = sum(s.ticks for s in socks)
    await asyncio.gather(
        *(asyncio.wait_for(ws.close(), 10) for ws in conns), return_exceptions=True
    )
    for reader in readers:
        reader.cancel()
    await asyncio.gather(*readers, return_exceptions=True)
    result = {"latencies": latencies, "closed": len(closed), "codes": sorted(set(closed))}
    print(json.dumps({**result, "ticks": ticks, "retries": retries[0]}), flush=True)


class FleetNotReady(RuntimeError):
    """A client process exited before its sockets were all open and subscribed."""


class ClientFleet:
    """``count`` sockets in ``processes`` client processes (this module, run as a script)."""

    def __init__(self, url: str, count: int, channel: str, token: str | None, processes: int):
        self.url, self.count, self.channel, self.token = url, count, channel, token
        self.processes = max(1, min(processes, count))
        self._procs: list[asyncio.subprocess.Process] = []

    async def start(self, timeout: float) -> None:
        """Start the processes; return once every socket is open and subscribed."""
        root = ROOT
        env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
        share, extra = divmod(self.count, self.processes)
        for i in range(self.processes):
            n = share + (i < extra)
            args = [sys.executable, "-m", "benchmarks.fanout_clients", self.url, str(n)]
            args += [self.channel] + (["--token", self.token] if self.token else [])
            self._procs.append(
                await asyncio.create_subprocess_exec(
                    *args,
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    env=env,
                    limit=2**28,
                )
            )
        async with asyncio.timeout(timeout):
            for proc in self._procs:
                assert proc.stdout is not None
                line = (await proc.stdout.readline()).decode().strip()
                if line != "ready":
                    raise FleetNotReady(f"a client process did not get ready: {line!r}")

    async def _say(self, line: str) -> None:
        for proc in self._procs:
            assert proc.stdin is not None
            proc.stdin.write(f"{line}\n".encode())
            await proc.stdin.drain()

    async def record(self) -> None:
        await self._say("record")

    async def stop(self, timeout: float = 120.0) -> dict[str, Any]:
        """Stop recording and close; the merged results of every process."""
        await self._say("stop")
        merged: dict[str, Any] = {
            "latencies": [],
            "closed": 0,
            "codes": [],
            "ticks": 0,
            "retries": 0,
        }
        async with asyncio.timeout(timeout):
            for proc in self._procs:
                assert proc.stdout is not None
                result = json.loads(await proc.stdout.readline())
                merged["latencies"] += result["latencies"]
                merged["closed"] += result["closed"]
                merged["codes"] = sorted(set(merged["codes"]) | set(result["codes"]))
                merged["ticks"] += result["ticks"]
                merged["retries"] += result["retries"]
                await proc.wait()
        self._procs = []
        return merged

    def kill(self) -> None:
        for proc in self._procs:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        self._procs = []


if __name__ == "__main__":
    argv = sys.argv[1:]
    token_arg = None
    if "--token" in argv:
        i = argv.index("--token")
        token_arg = argv[i + 1]
        del argv[i : i + 2]
    asyncio.run(main(argv[0], int(argv[1]), argv[2], token_arg))
