"""The EventHub actor: a thin Ray shell around :class:`~control_plane.hub.EventLog`.

Publishers call :meth:`EventHub.publish` with a batch; each gateway replica (and the
controller) keeps exactly one :meth:`EventHub.listen` call in flight with its cursor and gets
what its filter takes after it, so the hub does one call per batch per reader, never one per
event, and sends a reader nothing it would drop (a replica whose sockets watch one job is not
sent the events of a thousand others).

The log is durable (``core/log_writer.py``, ``core/event_store.py``, the SQLite file of
``core/sqlite_store.py`` by default): a publish is written to the store, in one
transaction, before it is appended and before its call returns, so a reader never sees
and a publisher is never told of an event that a crash would lose. A publish the store
refuses (disk full, read-only) raises :class:`~control_plane.core.errors.EventLogError` to
its publisher and is not appended. A numbered batch that waits for an earlier one
(``ordering.py``) is acknowledged once it is written, not when it arrives. Ray re-runs
``__init__`` when the hub's process dies (``max_restarts=-1``): it restores the history,
the epoch and every publisher's next batch number from the store, and Ray sends the calls
that were in flight again (``max_task_retries=-1``), in any order; a batch that was written
before the crash is acknowledged again without being appended twice.

Control never waits behind data (``core/lanes.py``): a batch with a lifecycle event is
appended when its call runs, while bulk batches (``job.progress``, ``agent.*``, ...) take
turns, one per pass of the event loop, so a ``job.paused``, a woken listen or a ``head``
waits for at most the one bulk batch being written when it came.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from operator import itemgetter
from typing import Any, Concatenate, ParamSpec, TypeVar

import ray

from control_plane.actors import runtime
from control_plane.actors import state_dir as state_dirs
from control_plane.core import priority
from control_plane.core.encoding import encode_event
from control_plane.core.errors import InvalidEventError
from control_plane.core.event_store import EventStore
from control_plane.core.hub_log import TARGET_CHANNEL, Encoded, ListenResult, ReaderFilter
from control_plane.core.lanes import BulkLane, is_control
from control_plane.core.limits import DEFAULT_MAX_EVENT_BYTES, check_batch
from control_plane.core.log_writer import LogWriter
from control_plane.core.loop_thread import LoopThread
from control_plane.core.sqlite_store import SQLiteEventStore
from control_plane.observability import logs, metrics, tracing

logger = logging.getLogger(__name__)

DEFAULT_HISTORY = 100_000
DEFAULT_HISTORY_BYTES = 256 * 1024 * 1024  # of frames kept in memory; the oldest go first
RETAIN_INTERVAL = 2.0  # seconds between two passes of retention (by age, and in the store)
BULK_CALLS = 1000  # bulk publishes the hub takes in at once (its own Ray concurrency group)

P = ParamSpec("P")
R = TypeVar("R")


def on_log_loop(
    method: Callable[Concatenate[EventHub, P], Coroutine[Any, Any, R]],
) -> Callable[Concatenate[EventHub, P], Coroutine[Any, Any, R]]:
    """Run a hub method on the loop that holds the log, whatever Ray group called it."""

    @functools.wraps(method)
    async def on_loop(self: EventHub, *args: P.args, **kwargs: P.kwargs) -> R:
        return await self._log_loop.run(method(self, *args, **kwargs))

    return on_loop


def open_store(state_dir: str | None) -> SQLiteEventStore:
    """The SQLite log in the state directory (``actors/state_dir.py``)."""
    return SQLiteEventStore(state_dirs.resolve(state_dir) / state_dirs.EVENTS_FILE)


class EventHub:
    """``capacity`` events are kept, with ``history_bytes`` at most that many bytes of them,
    and with ``history_age`` none older than that many seconds; ``store`` is where they live
    (default: the SQLite file in ``state_dir``). A publish with an event over
    ``max_event_bytes``, or of a type only the gateway sends, is refused whole
    (:class:`~control_plane.core.errors.EventTooLargeError`, ``InvalidEventError``)."""

    def __init__(
        self,
        capacity: int = DEFAULT_HISTORY,
        state_dir: str | None = None,
        history_age: float | None = None,
        store: EventStore | None = None,
        history_bytes: int | None = DEFAULT_HISTORY_BYTES,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    ) -> None:
        if history_bytes is not None and history_bytes < max_event_bytes:
            raise ValueError(
                f"history_bytes ({history_bytes}) must hold one event of max_event_bytes "
                f"({max_event_bytes})"
            )
        self._max_event_bytes = max_event_bytes
        self._writer = LogWriter(
            capacity,
            store if store is not None else open_store(state_dir),
            history_age,
            history_bytes=history_bytes,
        )
        self._log = self._writer.log
        logs.configure_actor()
        priority.favour_process()  # ahead of the jobs' bodies (core/priority.py)
        self._sweeper: asyncio.Task[None] | None = None
        self._faults: dict[str, tuple[int, str]] = {}
        self._published: Counter[str] = Counter()  # by type, flushed to metrics each second
        self._flusher: asyncio.Task[None] | None = None
        self._bulk = BulkLane()  # control calls go ahead of queued bulk publishes
        self._log_loop = LoopThread("event-log")  # where the log lives (see on_log_loop)
        if self._writer.restored:
            logger.info(
                "event hub restored epoch %s: seq %d..%d",
                self._log.epoch,
                self._log.oldest,
                self._log.head,
            )

    @on_log_loop
    async def publish(self, events: list[dict[str, Any]], target: str = TARGET_CHANNEL) -> int:
        """Append a batch of envelopes; return the seq of the last one."""
        self._start_sweeper()
        try:
            encoded = [encode_event(e) for e in events]
        except ValueError as e:  # a NaN or an Infinity: JSON.parse would refuse the frame
            raise InvalidEventError(f"an event cannot be encoded: {e}") from e
        check_batch(encoded, self._max_event_bytes)
        if metrics.enabled():
            self._published.update(map(itemgetter(0), encoded))
        return self._writer.publish(self._prepare(encoded), target)

    @ray.method(concurrency_group="bulk")
    @on_log_loop
    async def publish_encoded(
        self,
        events: list[Encoded],
        target: str = TARGET_CHANNEL,
        publisher: str | None = None,
        number: int | None = None,
    ) -> int:
        """Append a batch that its publisher encoded with :func:`encode_event`.

        A ``publisher`` that keeps several batches in flight numbers them from 0; each is
        appended after the one before it (``ordering.py``), and its call returns once it is
        written. A number appended before (a call Ray sent again after a restart) is
        acknowledged without being appended again.

        Ray takes these calls in by a concurrency group of their own (``bulk``), so that
        hundreds of them queued do not delay the intake of the hub's other calls; a batch
        with a lifecycle event should come by :meth:`publish_control` (``lanes.publish_lane``
        chooses)."""
        return await self._publish_encoded(events, target, publisher, number)

    @on_log_loop
    async def publish_control(
        self,
        events: list[Encoded],
        target: str = TARGET_CHANNEL,
        publisher: str | None = None,
        number: int | None = None,
    ) -> int:
        """:meth:`publish_encoded` by the control lane: taken in with the hub's other calls,
        ahead of the queued bulk publishes, and appended without waiting for a turn (a
        numbered batch still waits for its publisher's batch before it)."""
        return await self._publish_encoded(events, target, publisher, number)

    async def _publish_encoded(
        self, events: list[Encoded], target: str, publisher: str | None, number: int | None
    ) -> int:
        self._start_sweeper()
        check_batch(events, self._max_event_bytes)  # refused whole: nothing appended
        events = self._prepare(events)
        if metrics.enabled():
            self._published.update(map(itemgetter(0), events))
        start = tracing.now_ns() if tracing.active() else 0
        if is_control(map(itemgetter(0), events)):
            head = await self._admit(events, target, publisher, number)
        else:
            async with self._bulk.turn():
                done = self._admit(events, target, publisher, number)
            head = await done
        if start:
            tracing.record("hub.append", start, events=len(events), head=head)
        return head

    def _prepare(self, events: list[Encoded]) -> list[Encoded]:
        """The events as they are appended (a shard tags them with its index)."""
        return events

    def _admit(
        self, events: list[Encoded], target: str, publisher: str | None, number: int | None
    ) -> asyncio.Future[int]:
        """Write the batch now if it may go (a numbered one waits for the one before it)."""
        if publisher is None or number is None:
            done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            try:
                done.set_result(self._writer.publish(events, target))
            except Exception as e:
                done.set_exception(e)
            return done
        return self._writer.admit_numbered(events, target, publisher, number)

    def _start_sweeper(self) -> None:
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())
            self._flusher = asyncio.get_running_loop().create_task(
                metrics.flush_every(self._flush_metrics)
            )

    def _flush_metrics(self, rec: metrics.Recorder) -> None:
        log = self._log
        rec.flush_counts("events_published", "type", self._published, metrics.type_tag)
        rec.flush_counts("events_appended", "type", log.appended_types, metrics.type_tag)
        rec.set("hub_history_events", len(log))
        rec.set("hub_history_bytes", log.frame_bytes())
        rec.set("hub_head_seq", log.head)

    async def set_metrics(self, on: bool) -> None:
        """Turn metrics on or off in the hub's process (benchmarks compare the two)."""
        metrics.set_enabled(on)

    async def _sweep(self) -> None:
        """Append what waited too long for a batch that never came; apply retention."""
        writer = self._writer
        retained_at = time.monotonic()
        while True:
            await asyncio.sleep(writer.order.gap_wait / 2)
            writer.sweep()
            if time.monotonic() - retained_at >= RETAIN_INTERVAL:
                retained_at = time.monotonic()
                writer.retain()

    @on_log_loop
    async def listen(
        self,
        epoch: str | None,
        after_seq: int,
        timeout: float = 30.0,
        limit: int = 10_000,
        reader: str | None = None,
    ) -> ListenResult:
        self._start_sweeper()  # retention by age runs also while nothing is published
        if self._faults:
            self._inject_fault(reader)
        return await self._log.listen(epoch, after_seq, timeout, limit, reader)

    @on_log_loop
    async def set_filter(self, reader: str, wanted: ReaderFilter, version: int) -> None:
        self._log.set_filter(reader, wanted, version)

    @on_log_loop
    async def drop_reader(self, reader: str) -> None:
        self._log.drop_reader(reader)

    @on_log_loop
    async def read_filtered(
        self, epoch: str | None, after_seq: int, upto: int, wanted: ReaderFilter
    ) -> ListenResult:
        return self._log.read_filtered(epoch, after_seq, upto, wanted)

    @on_log_loop
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

    @on_log_loop
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

    @on_log_loop
    async def stats(self) -> dict[str, Any]:
        return {
            **self._log.stats(),
            "batches_waiting": len(self._writer.order),
            "bulk_waiting": self._bulk.waiting,
        }

    @on_log_loop
    async def log_stats(self, frames: bool = False) -> dict[str, Any]:
        """The store's file and size (``SQLiteEventStore.stats``): it counts the rows (and
        with ``frames`` decodes them), so not for a loop."""
        store = self._writer.store
        return store.stats(frames) if isinstance(store, SQLiteEventStore) else {}

    async def pid(self) -> int:
        """The hub's process id (tests kill it to see what a crash loses)."""
        return os.getpid()

    @on_log_loop
    async def constrain_log(self, how: str) -> None:
        """Fault injection for tests: ``"full"`` caps the SQLite file at its size (the next
        write that needs a page fails with SQLITE_FULL, as on a full disk), ``"read-only"``
        opens it again read-only (SQLITE_READONLY), ``"writable"`` undoes both."""
        store = self._writer.store
        if not isinstance(store, SQLiteEventStore):
            raise TypeError(f"the hub's store is a {type(store).__name__}, not SQLite")
        if how == "full":
            store.fill()
        elif how == "read-only":
            store.reopen(read_only=True)
        elif how == "writable":
            store.reopen(read_only=False)
            store.set_max_pages(2**31 - 2)
        else:
            raise ValueError(f"unknown constraint {how!r}")

    @on_log_loop
    async def set_durable(self, durable: bool) -> None:
        """For benchmarks that compare the hub with and without its file, in one run: while
        off, publishes are not written (a restart loses them and what came before)."""
        self._writer.durable = durable

    @on_log_loop
    async def head(self) -> tuple[str, int]:
        return self._log.epoch, self._log.head

    async def shard_info(self) -> tuple[int, int]:
        """(this shard's index, the hub's shard count): one hub is shard 0 of 1
        (``actors/hub_shards.py`` has the sharded hub)."""
        return 0, 1


EventHubActor: Any = ray.remote(concurrency_groups={"bulk": BULK_CALLS})(EventHub)  # type: ignore[call-overload]


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


def ensure_hub(
    capacity: int = DEFAULT_HISTORY,
    state_dir: str | None = None,
    history_age: float | None = None,
    history_bytes: int | None = DEFAULT_HISTORY_BYTES,
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
) -> Any:
    """Create the named, detached hub unless it exists; return its handle."""
    handle = EventHubActor.options(**runtime.singleton_options(runtime.HUB_NAME)).remote(
        capacity,
        state_dir,
        history_age,
        history_bytes=history_bytes,
        max_event_bytes=max_event_bytes,
    )
    ray.get(handle.head.remote())
    return handle
