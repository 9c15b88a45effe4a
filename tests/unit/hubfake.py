"""The hub's real log (``EventLog``) served as a ``HubPort`` in this process, with faults to
inject: what the Ray-free reader and seam tests read instead of the EventHub actor."""

from __future__ import annotations

import asyncio
from typing import Any

from control_plane.core.hub_log import TARGET_CHANNEL, EventLog, ListenResult, ReaderFilter
from control_plane.core.local_hub import LocalHub
from control_plane.core.protocol import make_event


class LogHub(LocalHub):
    """``HubPort`` over an in-process :class:`EventLog`; ``faults`` is a list of exceptions
    the next calls raise (any method), ``calls`` counts calls by method."""

    def __init__(self, log: EventLog | None = None) -> None:
        super().__init__(log)
        self.faults: list[BaseException] = []
        self.calls: dict[str, int] = {}
        self.head_gate: asyncio.Event | None = None  # hold head() until set

    def _call(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1
        if self.faults:
            raise self.faults.pop(0)

    async def head(self) -> tuple[str, int]:
        self._call("head")
        if self.head_gate is not None:
            await self.head_gate.wait()
        return await super().head()

    async def listen(
        self, epoch: str | None, after_seq: int, timeout: float, limit: int, reader: str
    ) -> ListenResult:
        self._call("listen")
        return await super().listen(epoch, after_seq, timeout, limit, reader)

    async def read_filtered(
        self, epoch: str | None, after_seq: int, upto: int, wanted: ReaderFilter
    ) -> ListenResult:
        self._call("read_filtered")
        return await super().read_filtered(epoch, after_seq, upto, wanted)

    async def set_filter(self, reader: str, wanted: ReaderFilter, version: int) -> None:
        self._call("set_filter")
        await super().set_filter(reader, wanted, version)

    async def drop_reader(self, reader: str) -> None:
        self._call("drop_reader")
        await super().drop_reader(reader)

    async def replay(
        self,
        after_seq: int,
        channels: list[str],
        epoch: str | None,
        client_id: str | None,
        upto: int | None = None,
    ) -> dict[str, Any]:
        self._call("replay")
        return await super().replay(after_seq, channels, epoch, client_id, upto)

    def emit(self, job_id: str, count: int = 1, event_type: str = "job.progress") -> list[int]:
        """Append ``count`` events of a job; return their seqs."""
        data: dict[str, Any] = {"job_id": job_id, "status": "running", "progress": 1.0}
        entries = self.log.append([make_event(event_type, data) for _ in range(count)])
        return [e.seq for e in entries]

    def emit_target(self, target: str = TARGET_CHANNEL) -> int:
        return self.log.append([make_event("app.note", {"n": 1})], target)[0].seq
