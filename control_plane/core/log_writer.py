"""What the hub does with a publish: order it, write it, append it, answer it. No Ray here.

:class:`LogWriter` holds the hub's :class:`~control_plane.core.hub_log.EventLog`, the
:class:`~control_plane.core.ordering.BatchOrder` of numbered batches and the
:class:`~control_plane.core.event_store.EventStore`, and keeps them in one rule: a batch is
written to the store (one transaction) before it is appended to the log and before its
publish is answered. So a reader never sees, and a publisher is never told of, an event
that a crash would lose, and a batch the store refuses (disk full, read-only) raises
:class:`~control_plane.core.errors.EventLogError` to its publisher, appended nowhere. The
write is synchronous on the hub's event loop: nothing else runs between the commit and
the append, so the log and the store agree at every await.

A numbered batch that waits for an earlier one is answered once it is written, not when it
arrives. A writer made over a store that holds a log takes it back whole (:meth:`LogWriter.
__init__`): the epoch, the history, ``seq`` going on, and each publisher's next number, so
that a batch that was written before a crash, and is sent again, is answered, not appended.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import NamedTuple

from control_plane.core.encoding import Encoded
from control_plane.core.errors import EventLogError
from control_plane.core.event_store import EventStore, StoredBatch
from control_plane.core.hub_log import TARGET_CHANNEL, EventLog
from control_plane.core.ordering import BatchOrder

logger = logging.getLogger(__name__)


class _Pending(NamedTuple):
    """A batch on its way into the log; ``done`` answers its publish once it is written."""

    events: list[Encoded]
    target: str
    publisher: str | None = None
    number: int = 0
    done: asyncio.Future[int] | None = None


class LogWriter:
    """The log, the order of numbered batches and the store, restored from the store."""

    def __init__(
        self,
        capacity: int,
        store: EventStore,
        history_age: float | None = None,
        order: BatchOrder[_Pending] | None = None,
        history_bytes: int | None = None,
    ) -> None:
        self.store = store
        self.history_age = history_age
        self.durable = True  # False: nothing is written (benchmarks compare the two)
        restored = store.load()
        self.restored = restored.epoch is not None
        self.log = EventLog(capacity, restored.epoch, history_bytes)
        self.log.restore(restored.head, restored.batches)
        if not self.restored:
            store.begin(self.log.epoch)
        self.order: BatchOrder[_Pending] = order if order is not None else BatchOrder()
        now = time.monotonic()
        for publisher, expected in restored.publishers.items():
            self.order.restore(publisher, expected, now)

    def publish(self, events: list[Encoded], target: str = TARGET_CHANNEL) -> int:
        """Write and append an unnumbered batch; the head. Raises :class:`EventLogError`."""
        return self._write([_Pending(events, target)])

    async def publish_numbered(
        self, events: list[Encoded], target: str, publisher: str, number: int
    ) -> int:
        """Batch ``number`` of ``publisher``: appended after the one before it, once; returns
        the head once it is written (at once for a number appended before)."""
        return await self.admit_numbered(events, target, publisher, number)

    def admit_numbered(
        self, events: list[Encoded], target: str, publisher: str, number: int
    ) -> asyncio.Future[int]:
        """What :meth:`publish_numbered` does before it waits: the batch, and those it
        releases, written now if they may go. Synchronous, so that a caller holding a turn
        of the hub's bulk lane (``lanes.py``) gives it back before it waits."""
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        if self.order.duplicate(publisher, number):
            done.set_result(self.log.head)
            return done
        pending = _Pending(events, target, publisher, number, done)
        ready = self.order.admit(publisher, number, pending, time.monotonic())
        if ready:
            self._write_released(ready)
        return done

    def sweep(self) -> None:
        """Write what waited too long for a batch that never came (``ordering.py``)."""
        overdue = self.order.overdue(time.monotonic())
        if overdue:
            self._write_released(overdue)

    def retain(self) -> None:
        """Forget what the history no longer keeps (by count, and by age), in the store too."""
        now = time.time()
        older_than = now - self.history_age if self.history_age else 0.0
        oldest = self.log.expire(older_than) if self.history_age else self.log.oldest
        try:
            self.store.retain(oldest, older_than, now - self.order.forget_after)
        except EventLogError as e:
            logger.warning("event log: retention failed: %s", e.message)

    def _write(self, ready: list[_Pending]) -> int:
        """Write ``ready`` to the store in one transaction, then append it; the head."""
        at = time.time()
        seq = first = self.log.head + 1
        batches: list[StoredBatch] = []
        publishers: dict[str, int] = {}
        for pending in ready:
            if pending.events:
                batches.append(StoredBatch(seq, pending.target, at, pending.events))
                seq += len(pending.events)
            if pending.publisher is not None:
                publishers[pending.publisher] = self.order.expected(pending.publisher)
        if self.durable:
            try:
                self.store.append(batches, publishers)
            except EventLogError as e:
                logger.error("%s; %d events refused", e.message, seq - first)
                raise
        for batch in batches:
            self.log.append_encoded(batch.events, batch.target, at)
        return self.log.head

    def _write_released(self, ready: list[_Pending]) -> None:
        """Write numbered batches that may go now and answer their publishes."""
        try:
            head = self._write(ready)
        except Exception as e:  # EventLogError, or a bug: no publish may wait forever
            for pending in ready:
                if pending.publisher is not None:
                    self.order.rewind(pending.publisher, pending.number)
                if pending.done is not None and not pending.done.done():
                    pending.done.set_exception(e)
            return
        for pending in ready:
            if pending.done is not None and not pending.done.done():
                pending.done.set_result(head)
