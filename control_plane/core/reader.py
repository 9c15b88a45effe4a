"""One reader of the hub's log per process: the counterpart of Ray Serve's ``LongPollClient``.

Why this is a class of its own: the gateway replica and the controller each had a
hand-written long-poll loop, and the replica's started on the first socket's connect after
awaiting the hub's head. Sockets that connected at the same moment each started a loop, and
each loop delivered every event: every socket got every event twice (five thousand frames
for a 200-event job with 50 sockets). Here :meth:`HubReader.start` is synchronous and makes
the one task before anything awaits, so however many callers race to start the reader, one
loop runs.

The loop keeps one ``listen`` call in flight with the reader's cursor and epoch and hands
what comes back to ``on_entries`` (synchronously, then moves the cursor, so that a caller
that reads :attr:`HubReader.cursor` knows every entry up to it went through
``on_entries`` and every later one will). The hub sends the reader only what its filter
takes; when the filter changes while a listen is out, the range that listen covered is read
again with the new filter (a new subscription misses nothing). When the hub says the
cursor is void (a new epoch after a hub restart, or a reader that fell behind the retained
history) ``on_reset`` is told, and the reader goes on from the hub's head. Errors are
retried with jittered exponential backoff; an error the reader has never seen is logged
with its traceback, and the reader registers its filter again, in case the error left the
hub without it. No Ray here: the hub is a :class:`HubPort` (``actors/hub.py`` has the Ray
one), so this is tested against a fake hub in milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from control_plane.core.hub_log import UNKNOWN_READER, ListenResult, LogEntry, ReaderFilter

logger = logging.getLogger(__name__)


class HubPort(Protocol):
    """What a reader needs of the hub (the EventHub actor's methods, awaited)."""

    async def head(self) -> tuple[str, int]: ...

    async def listen(
        self, epoch: str | None, after_seq: int, timeout: float, limit: int, reader: str
    ) -> ListenResult: ...

    async def read_filtered(
        self, epoch: str | None, after_seq: int, upto: int, wanted: ReaderFilter
    ) -> ListenResult: ...

    async def set_filter(self, reader: str, wanted: ReaderFilter, version: int) -> None: ...

    async def drop_reader(self, reader: str) -> None: ...

    async def replay(
        self,
        after_seq: int,
        channels: list[str],
        epoch: str | None,
        client_id: str | None,
        upto: int | None = None,
    ) -> dict[str, Any]: ...


class ReaderState(StrEnum):
    """Where a :class:`HubReader` is. ``IDLE → STARTING → RUNNING → STOPPED``."""

    IDLE = "idle"  # made, not started
    STARTING = "starting"  # its task asks the hub for the head
    RUNNING = "running"  # a listen is (or is about to be) in flight
    STOPPED = "stopped"  # stopped for good


@dataclass(frozen=True)
class Reset:
    """What ``on_reset`` is told: the cursor ``cursor`` of epoch ``old_epoch`` is void."""

    old_epoch: str | None
    epoch: str
    cursor: int
    head: int
    oldest: int

    @property
    def why(self) -> str:
        return "event hub restarted" if self.old_epoch != self.epoch else "reader fell behind"


@dataclass(frozen=True)
class Backoff:
    """Jittered exponential backoff: ``attempt`` 1 waits about ``initial``, doubling to ``cap``."""

    initial: float = 0.1
    cap: float = 5.0

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        full = min(self.cap, self.initial * 2 ** max(0, attempt - 1))
        return full / 2 + rand() * full / 2


EntriesHandler = Callable[[list[LogEntry]], None]
ResetHandler = Callable[[Reset], Awaitable[None]]


class HubReader:
    """One cursor on the hub's log, one listen in flight, one start however many callers."""

    def __init__(
        self,
        hub: HubPort,
        reader_id: str,
        on_entries: EntriesHandler,
        on_reset: ResetHandler,
        *,
        wanted: ReaderFilter | None = None,
        listen_timeout: float = 30.0,
        batch: int = 4096,
        backoff: Backoff | None = None,
    ) -> None:
        self.hub = hub
        self.reader_id = reader_id
        self._on_entries = on_entries
        self._on_reset = on_reset
        self.wanted = wanted if wanted is not None else ReaderFilter()
        self.version = 1  # of ``wanted``; the hub knows it once registered
        self.listen_timeout = listen_timeout
        self.batch = batch
        self.backoff = backoff or Backoff()
        self.state = ReaderState.IDLE
        self.epoch: str | None = None
        self.cursor = 0
        self.head = 0  # the hub's head when a listen last came back (lag: head - cursor)
        self.received = 0  # entries handed to on_entries
        self.errors = 0
        self.resets = 0
        self._registered = False
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._push: asyncio.Task[None] | None = None
        self._seen_errors: set[str] = set()

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the loop unless it runs; synchronous, so racing callers start one loop."""
        if self.state is ReaderState.STOPPED:
            raise RuntimeError(f"hub reader {self.reader_id} was stopped")
        if self._task is None or self._task.done():
            self.state = ReaderState.STARTING
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def ready(self, timeout: float | None = None) -> tuple[str, int]:
        """Start if needed, wait until the reader has a cursor; return ``(epoch, cursor)``."""
        self.start()
        async with asyncio.timeout(timeout):
            await self._ready.wait()
        assert self.epoch is not None  # set before _ready
        return self.epoch, self.cursor

    async def stop(self, timeout: float = 2.0) -> None:
        """Stop the loop and tell the hub to forget this reader (bounded; the hub forgets
        idle readers by itself anyway)."""
        self.state = ReaderState.STOPPED
        for task in (self._task, self._push):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        with contextlib.suppress(Exception):
            async with asyncio.timeout(timeout):
                await self.hub.drop_reader(self.reader_id)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    # --- the filter --------------------------------------------------------------------------

    def want(self, wanted: ReaderFilter) -> bool:
        """Take ``wanted`` as the filter from now on; True when it changed.

        Entries after :attr:`cursor` reach ``on_entries`` through the new filter (a listen
        that was out meanwhile has its range read again); the hub is told at once.
        """
        if wanted == self.wanted:
            return False
        self.wanted = wanted
        self.version += 1
        if self._registered and (self._push is None or self._push.done()):
            self._push = asyncio.get_running_loop().create_task(self._push_filter())
            self._push.add_done_callback(self._push_done)
        return True

    async def _push_filter(self) -> None:
        """Send the newest filter until the hub has it (a change meanwhile sends again)."""
        while True:
            version = self.version
            await self.hub.set_filter(self.reader_id, self.wanted, version)
            if version == self.version:
                return

    def _push_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        # The listen loop registers again after its next error or UNKNOWN_READER answer.
        logger.warning(
            "telling the hub reader %s's filter failed", self.reader_id, exc_info=task.exception()
        )
        self._registered = False

    # --- the loop ----------------------------------------------------------------------------

    async def _run(self) -> None:
        attempt = 0
        while True:
            try:
                if self.epoch is None:
                    self.epoch, self.cursor = await self.hub.head()
                    self.head = self.cursor
                    self.state = ReaderState.RUNNING
                    self._ready.set()
                if not self._registered:
                    await self._register()
                result = await self._listen_once()
                attempt = 0
                if result is not None:
                    await self._take(result)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                attempt += 1
                self.errors += 1
                # An error may have left the hub with a wrong filter for us, or none:
                # register ours again from scratch.
                self._registered = False
                self._log_error(e, attempt)
                await asyncio.sleep(self.backoff.delay(attempt))

    async def _register(self) -> None:
        """Give the hub our filter, replacing whatever it has for this reader id."""
        version = self.version
        await self.hub.drop_reader(self.reader_id)
        await self.hub.set_filter(self.reader_id, self.wanted, version)
        self._registered = True
        if version != self.version:  # changed while we registered
            await self._push_filter()

    async def _listen_once(self) -> ListenResult | None:
        """One filtered listen; None when the hub did not know the reader."""
        result = await self.hub.listen(
            self.epoch, self.cursor, self.listen_timeout, self.batch, self.reader_id
        )
        if result.version == UNKNOWN_READER:
            self._registered = False
            return None
        while not result.reset and result.version < self.version:
            # The filter changed while the listen was out: read its range again with the
            # filter as it is now (and again if it changes once more meanwhile).
            version = self.version
            again = await self.hub.read_filtered(
                self.epoch, self.cursor, result.cursor, self.wanted
            )
            result = again._replace(version=version)
        return result

    async def _take(self, result: ListenResult) -> None:
        if result.reset:
            reset = Reset(self.epoch, result.epoch, self.cursor, result.head, result.oldest)
            self.resets += 1
            logger.warning(
                "hub reader %s: %s (cursor %d, oldest %d)",
                self.reader_id,
                reset.why,
                reset.cursor,
                reset.oldest,
            )
            self.epoch, self.cursor = result.epoch, result.head
            try:
                await self._on_reset(reset)
            except Exception:
                logger.exception("hub reader %s: on_reset failed", self.reader_id)
            return
        self.epoch, self.head = result.epoch, result.head
        if result.entries:
            self.received += len(result.entries)
            try:
                self._on_entries(result.entries)
            except Exception:
                # Reading the same entries again would hand some of them over twice: log
                # and go on past them.
                logger.exception("hub reader %s: on_entries failed", self.reader_id)
        self.cursor = result.cursor

    def _log_error(self, error: Exception, attempt: int) -> None:
        kind = type(error).__name__
        if kind not in self._seen_errors:
            self._seen_errors.add(kind)
            logger.error(
                "hub reader %s: %s, not seen before; retrying",
                self.reader_id,
                kind,
                exc_info=error,
            )
        else:
            logger.warning(
                "hub reader %s: %s: %s (attempt %d); retrying",
                self.reader_id,
                kind,
                error,
                attempt,
            )

    def stats(self) -> dict[str, object]:
        return {
            "reader": self.reader_id,
            "state": self.state.value,
            "epoch": self.epoch,
            "cursor": self.cursor,
            "received": self.received,
            "errors": self.errors,
            "resets": self.resets,
        }
