"""The hub's log served in-process: :class:`LocalHub` is a ``HubPort`` (``reader.py``) over
an :class:`~control_plane.core.hub_log.EventLog`, for what reads the hub without Ray (the
Ray-free reader and seam tests, the socket-cost benchmark)."""

from __future__ import annotations

from typing import Any

from control_plane.core.hub_log import EventLog, ListenResult, ReaderFilter


class LocalHub:
    """The EventHub actor's reading methods, answered by ``log`` in this process."""

    def __init__(self, log: EventLog | None = None, capacity: int = 10_000) -> None:
        self.log = log if log is not None else EventLog(capacity=capacity)

    async def head(self) -> tuple[str, int]:
        return self.log.epoch, self.log.head

    async def listen(
        self, epoch: str | None, after_seq: int, timeout: float, limit: int, reader: str
    ) -> ListenResult:
        return await self.log.listen(epoch, after_seq, timeout, limit, reader)

    async def read_filtered(
        self, epoch: str | None, after_seq: int, upto: int, wanted: ReaderFilter
    ) -> ListenResult:
        return self.log.read_filtered(epoch, after_seq, upto, wanted)

    async def set_filter(self, reader: str, wanted: ReaderFilter, version: int) -> None:
        self.log.set_filter(reader, wanted, version)

    async def drop_reader(self, reader: str) -> None:
        self.log.drop_reader(reader)

    async def replay(
        self,
        after_seq: int,
        channels: list[str],
        epoch: str | None,
        client_id: str | None,
        upto: int | None = None,
    ) -> dict[str, Any]:
        return self.log.replay(after_seq, channels, epoch, client_id, upto)
