"""A small test client over a real WebSocket: collects frames, waits for what it needs."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Callable
from typing import Any

import websockets

Frame = dict[str, Any]


class TestSocket:
    __test__ = False

    def __init__(self, ws: websockets.ClientConnection) -> None:
        self.ws = ws
        self.frames: list[Frame] = []
        self._new = asyncio.Event()
        self._ids = itertools.count(1)
        self._reader = asyncio.get_running_loop().create_task(self._read())
        self.closed: asyncio.Future[tuple[int | None, str | None]] = (
            asyncio.get_running_loop().create_future()
        )

    @classmethod
    async def open(
        cls, url: str, token: str | None, headers: dict[str, str] | None = None, **kw: Any
    ) -> TestSocket:
        hdrs = dict(headers or {})
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        ws = await websockets.connect(url, additional_headers=hdrs, open_timeout=30, **kw)
        return cls(ws)

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                self.frames.append(json.loads(raw))
                self._new.set()
        except websockets.ConnectionClosed:
            pass
        finally:
            if not self.closed.done():
                self.closed.set_result((self.ws.close_code, self.ws.close_reason))
            self._new.set()

    async def send(self, message: Frame | str) -> None:
        await self.ws.send(message if isinstance(message, str) else json.dumps(message))

    async def request(self, message: Frame, timeout: float = 30.0) -> Frame:
        """Send with a fresh id; return the ack or error that carries it."""
        request_id = f"r{next(self._ids)}"
        await self.send({**message, "id": request_id})
        return await self.wait_for(
            lambda f: f["type"] in ("ack", "error") and f["data"].get("request_id") == request_id,
            timeout,
        )

    async def subscribe(self, *channels: str, since: int | dict[str, int] | None = None) -> Frame:
        msg: Frame = {"type": "subscribe", "channels": list(channels)}
        if since is not None:
            msg["since"] = since
        return await self.request(msg)

    async def wait_for(self, predicate: Callable[[Frame], bool], timeout: float = 30.0) -> Frame:
        seen = 0
        async with asyncio.timeout(timeout):
            while True:
                for frame in self.frames[seen:]:
                    if predicate(frame):
                        return frame
                seen = len(self.frames)
                if self.closed.done():
                    raise ConnectionError(f"socket closed: {self.closed.result()}")
                self._new.clear()
                await self._new.wait()

    async def wait_type(
        self, event_type: str, job_id: str | None = None, timeout: float = 30.0
    ) -> Frame:
        return await self.wait_for(
            lambda f: (
                f["type"] == event_type
                and (job_id is None or f.get("data", {}).get("job_id") == job_id)
            ),
            timeout,
        )

    def events(self, job_id: str | None = None) -> list[Frame]:
        return [
            f
            for f in self.frames
            if "seq" in f and (job_id is None or f["data"].get("job_id") == job_id)
        ]

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()
