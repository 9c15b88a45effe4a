"""The EventHub actor: a thin Ray shell around :class:`~control_plane.hub.EventLog`.

Publishers call :meth:`EventHub.publish` with a batch; each gateway replica (and the
controller) keeps exactly one :meth:`EventHub.listen` call in flight with its cursor and gets
what its filter takes after it, so the hub does one call per batch per reader, never one per
event, and sends a reader nothing it would drop (a replica whose sockets watch one job is not
sent the events of a thousand others).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import ray

from control_plane.actors import runtime
from control_plane.core.hub_log import (
    TARGET_CHANNEL,
    Encoded,
    EventLog,
    ListenResult,
    ReaderFilter,
)
from control_plane.core.ordering import BatchOrder

DEFAULT_HISTORY = 100_000


class EventHub:
    def __init__(self, capacity: int = DEFAULT_HISTORY) -> None:
        self._log = EventLog(capacity)
        self._order: BatchOrder[tuple[list[Encoded], str]] = BatchOrder()
        self._sweeper: asyncio.Task[None] | None = None
        self._faults: dict[str, tuple[int, str]] = {}

    async def publish(self, events: list[dict[str, Any]], target: str = TARGET_CHANNEL) -> int:
        """Append a batch of envelopes; return the seq of the last one."""
        self._log.append(events, target)
        return self._log.head

    async def publish_encoded(
        self,
        events: list[Encoded],
        target: str = TARGET_CHANNEL,
        publisher: str | None = None,
        number: int | None = None,
    ) -> int:
        """Append a batch that its publisher encoded with :func:`encode_event`.

        A ``publisher`` that keeps several batches in flight numbers them from 0; each is
        appended after the one before it (``ordering.py``)."""
        if publisher is None or number is None:
            self._log.append_encoded(events, target)
            return self._log.head
        for batch, batch_target in self._order.admit(
            publisher, number, (events, target), time.monotonic()
        ):
            self._log.append_encoded(batch, batch_target)
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())
        return self._log.head

    async def _sweep(self) -> None:
        """Append what waited too long for a batch that never came."""
        while True:
            await asyncio.sleep(self._order.gap_wait / 2)
            for batch, target in self._order.overdue(time.monotonic()):
                self._log.append_encoded(batch, target)

    async def listen(
        self,
        epoch: str | None,
        after_seq: int,
        timeout: float = 30.0,
        limit: int = 10_000,
        reader: str | None = None,
    ) -> ListenResult:
        if self._faults:
            self._inject_fault(reader)
        return await self._log.listen(epoch, after_seq, timeout, limit, reader)

    async def set_filter(self, reader: str, wanted: ReaderFilter, version: int) -> None:
        self._log.set_filter(reader, wanted, version)

    async def drop_reader(self, reader: str) -> None:
        self._log.drop_reader(reader)

    async def read_filtered(
        self, epoch: str | None, after_seq: int, upto: int, wanted: ReaderFilter
    ) -> ListenResult:
        return self._log.read_filtered(epoch, after_seq, upto, wanted)

    async def replay(
        self,
        after_seq: int,
        channels: list[str],
        epoch: str | None = None,
        client_id: str | None = None,
        upto: int | None = None,
    ) -> dict[str, Any]:
        """What :meth:`EventLog.replay` says: the entries a subscribe with ``since`` (or a
        socket catching up) missed."""
        return self._log.replay(after_seq, channels, epoch, client_id, upto)

    async def fail_listens(self, reader_prefix: str, count: int, message: str) -> None:
        """Fault injection for tests: the next ``count`` listens of readers whose id starts
        with ``reader_prefix`` raise ``RuntimeError(message)``, an error no reader expects."""
        self._faults[reader_prefix] = (count, message)

    def _inject_fault(self, reader: str | None) -> None:
        for prefix, (count, message) in list(self._faults.items()):
            if reader is not None and reader.startswith(prefix):
                if count <= 1:
                    del self._faults[prefix]
                else:
                    self._faults[prefix] = (count - 1, message)
                raise RuntimeError(message)

    async def stats(self) -> dict[str, Any]:
        return {**self._log.stats(), "batches_waiting": len(self._order)}

    async def head(self) -> tuple[str, int]:
        return self._log.epoch, self._log.head


EventHubActor: Any = ray.remote(EventHub)


class RayHub:
    """The EventHub actor as a :class:`~control_plane.core.reader.HubPort`: its methods,
    awaited, so that the Ray-free :class:`~control_plane.core.reader.HubReader` reads it."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    async def head(self) -> tuple[str, int]:
        head: tuple[str, int] = await self.handle.head.remote()
        return head

    async def listen(
        self, epoch: str | None, after_seq: int, timeout: float, limit: int, reader: str
    ) -> ListenResult:
        result: ListenResult = await self.handle.listen.remote(
            epoch, after_seq, timeout, limit, reader
        )
        return result

    async def read_filtered(
        self, epoch: str | None, after_seq: int, upto: int, wanted: ReaderFilter
    ) -> ListenResult:
        result: ListenResult = await self.handle.read_filtered.remote(
            epoch, after_seq, upto, wanted
        )
        return result

    async def set_filter(self, reader: str, wanted: ReaderFilter, version: int) -> None:
        await self.handle.set_filter.remote(reader, wanted, version)

    async def drop_reader(self, reader: str) -> None:
        await self.handle.drop_reader.remote(reader)

    async def replay(
        self,
        after_seq: int,
        channels: list[str],
        epoch: str | None,
        client_id: str | None,
        upto: int | None = None,
    ) -> dict[str, Any]:
        reply: dict[str, Any] = await self.handle.replay.remote(
            after_seq, channels, epoch, client_id, upto
        )
        return reply


def ensure_hub(capacity: int = DEFAULT_HISTORY) -> Any:
    """Create the named, detached hub unless it exists; return its handle."""
    handle = EventHubActor.options(**runtime.singleton_options(runtime.HUB_NAME)).remote(capacity)
    ray.get(handle.head.remote())
    return handle
