"""The event log core: ``seq``, ``epoch``, bounded history and cursor waits. No Ray here.

The EventHub actor (``hub_actor.py``) is a thin shell around :class:`EventLog`. Every event
is numbered once, serialised to its JSON frame once, and kept in a bounded history; readers
hold a cursor (the last ``seq`` they saw) and ask for everything after it. ``epoch`` names
one life of the log: when the log is new (the hub restarted), old cursors mean nothing and
readers must be told so rather than silently skip.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterable
from typing import Any, NamedTuple

from control_plane.encoding import Encoded, encode_event
from control_plane.protocol import ALL_CHANNELS, JOBS_CHANNEL, LIFECYCLE_TYPES

# Where an entry goes. Most events are routed by channel; broadcast reaches every socket;
# ``client:<id>`` reaches one socket (the seed's send_to_client).
TARGET_CHANNEL = ""
TARGET_ALL = "*all"
CLIENT_TARGET_PREFIX = "client:"


def client_target(client_id: str) -> str:
    return CLIENT_TARGET_PREFIX + client_id


class LogEntry(NamedTuple):
    """One numbered event. ``frame`` is the JSON text sent to sockets, made once."""

    seq: int
    channel: str
    type: str
    target: str
    frame: str


class ListenResult(NamedTuple):
    """What a cursor read returns. ``reset`` means the caller's epoch or cursor is gone.

    ``cursor`` is the seq the read went through: a filtered read skips entries, so the
    reader's next cursor is this, not the last entry's seq. ``version`` is the version of
    the reader's filter that chose the entries (0 unfiltered; :data:`UNKNOWN_READER` when
    the log does not know the reader, which must then send its filter again).
    """

    epoch: str
    entries: list[LogEntry]
    head: int
    oldest: int
    reset: bool
    cursor: int = 0
    version: int = 0


UNKNOWN_READER = -1


class ReaderFilter(NamedTuple):
    """Which entries a reader wants, so that the hub sends it nothing else.

    ``channels`` are subscription channels (``job:<id>``, ``jobs``, ``system``, ``*``) with
    their usual meaning; ``prefixes`` take every channel that starts with one of them;
    ``broadcasts`` and ``client_targets`` take entries sent to all sockets and to one.
    ``latest_progress`` keeps, of the ``job.progress`` entries of one channel in one read,
    only the last: a reader that keeps state (the controller) needs no more.
    """

    channels: frozenset[str] = frozenset()
    prefixes: tuple[str, ...] = ()
    broadcasts: bool = True
    client_targets: bool = True
    latest_progress: bool = False


def select(entries: list[LogEntry], wanted: ReaderFilter) -> list[LogEntry]:
    """The entries ``wanted`` takes, in order."""
    channels = wanted.channels
    everything = ALL_CHANNELS in channels
    jobs = JOBS_CHANNEL in channels
    prefixes = wanted.prefixes
    broadcasts = wanted.broadcasts
    client_targets = wanted.client_targets
    out = [
        e
        for e in entries
        if (
            not e.target
            and (
                everything
                or e.channel in channels
                or (jobs and e.type in LIFECYCLE_TYPES)
                or (prefixes and e.channel.startswith(prefixes))
            )
        )
        or (e.target == TARGET_ALL and broadcasts)
        or (client_targets and e.target.startswith(CLIENT_TARGET_PREFIX))
    ]
    if wanted.latest_progress:
        out = latest_progress_only(out)
    return out


def latest_progress_only(entries: list[LogEntry]) -> list[LogEntry]:
    """Drop each ``job.progress`` entry that a later one on its channel supersedes."""
    last = {e.channel: e.seq for e in entries if e.type == "job.progress"}
    return [e for e in entries if e.type != "job.progress" or last[e.channel] == e.seq]


SCAN_LIMIT = 65_536  # entries a filtered listen looks at, at most, per return
READER_IDLE_LIMIT = 600.0  # seconds: a reader not heard of this long is forgotten


class _Reader:
    __slots__ = ("seen", "version", "wanted")

    def __init__(self, wanted: ReaderFilter, version: int, seen: float) -> None:
        self.wanted = wanted
        self.version = version
        self.seen = seen


class EventLog:
    """Numbers events, keeps the newest ``capacity`` of them, and answers cursor reads."""

    def __init__(self, capacity: int = 100_000, epoch: str | None = None) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.epoch = epoch or uuid.uuid4().hex[:12]
        self._entries: list[LogEntry] = []
        self._first_seq = 1  # seq of self._entries[0]
        self._head = 0
        self._changed = asyncio.Event()
        self.total_appended = 0
        self._readers: dict[str, _Reader] = {}

    @property
    def head(self) -> int:
        """The last seq assigned (0 when nothing was appended yet)."""
        return self._head

    @property
    def oldest(self) -> int:
        """The oldest retained seq (``head + 1`` when the history is empty)."""
        return self._trimmed_view()[0]

    def __len__(self) -> int:
        return len(self._trimmed_view()[1])

    def append(
        self, events: Iterable[dict[str, Any]], target: str = TARGET_CHANNEL
    ) -> list[LogEntry]:
        """Number and store envelopes ``{type, timestamp, data}``; return the new entries."""
        return self.append_encoded([encode_event(e) for e in events], target)

    def append_encoded(
        self, events: Iterable[Encoded], target: str = TARGET_CHANNEL
    ) -> list[LogEntry]:
        """Number and store events that :func:`encode_event` made (publishers encode, so the
        hub only splices the seq into each frame)."""
        seq = self._head
        added: list[LogEntry] = []
        for event_type, channel, head, tail in events:
            seq += 1
            added.append(LogEntry(seq, channel, event_type, target, f'{head},"seq":{seq}{tail}'))
        if not added:
            return added
        self._head = seq
        self._entries.extend(added)
        self.total_appended += len(added)
        overflow = len(self._entries) - self.capacity
        # Trim in chunks so that appends stay amortised O(1).
        if overflow > max(1, self.capacity // 10) or (overflow > 0 and self.capacity < 10):
            del self._entries[:overflow]
            self._first_seq += overflow
        self._wake()
        return added

    def _trimmed_view(self) -> tuple[int, list[LogEntry]]:
        """(first seq, entries) with the chunked overflow hidden."""
        overflow = len(self._entries) - self.capacity
        if overflow > 0:
            return self._first_seq + overflow, self._entries[overflow:]
        return self._first_seq, self._entries

    def covers(self, after_seq: int) -> bool:
        """True when every event after ``after_seq`` is still retained. ``0`` asks for the
        oldest retained, whatever it is, so it is always covered."""
        if after_seq == 0:
            return True
        first, _ = self._trimmed_view()
        return after_seq >= first - 1 and after_seq <= self._head

    def read(self, after_seq: int, limit: int | None = None) -> list[LogEntry]:
        """Entries with ``seq > after_seq`` (from the oldest retained if it is older)."""
        first, entries = self._trimmed_view()
        start = max(0, after_seq - first + 1)
        if limit is None:
            return entries[start:]
        return entries[start : start + limit]

    def listen_now(self, epoch: str | None, after_seq: int, limit: int) -> ListenResult:
        """A non-blocking cursor read that tells the reader when its cursor is void."""
        first, after_seq, reset = self._check_cursor(epoch, after_seq)
        entries = self.read(after_seq, limit)
        cursor = entries[-1].seq if entries else self._head
        return ListenResult(self.epoch, entries, self._head, first, reset, cursor)

    def _check_cursor(self, epoch: str | None, after_seq: int) -> tuple[int, int, bool]:
        """(oldest retained seq, where to read from, reset)."""
        first, _ = self._trimmed_view()
        reset = (epoch is not None and epoch != self.epoch) or after_seq > self._head
        if reset:
            after_seq = 0
        elif after_seq < first - 1:
            reset = True
        return first, after_seq, reset

    async def listen(
        self,
        epoch: str | None,
        after_seq: int,
        timeout: float,
        limit: int = 10_000,
        reader: str | None = None,
    ) -> ListenResult:
        """Long-poll: return at once if anything is newer than the cursor, else wait.

        With ``reader``, only what that reader's filter (:meth:`set_filter`) takes is
        returned, and the wait lasts until something it takes arrives.
        """
        if reader is not None:
            return await self._listen_filtered(epoch, after_seq, timeout, limit, reader)
        result = self.listen_now(epoch, after_seq, limit)
        if result.entries or result.reset or timeout <= 0:
            return result
        try:
            async with asyncio.timeout(timeout):
                while self._head <= after_seq:
                    await self._changed.wait()
        except TimeoutError:
            pass
        return self.listen_now(epoch, after_seq, limit)

    # --- filtered readers ------------------------------------------------------------------

    def set_filter(self, reader: str, wanted: ReaderFilter, version: int) -> None:
        """Register (or replace, if ``version`` is newer) what ``reader`` takes. A listen of
        that reader already waiting reads its range again with the new filter."""
        known = self._readers.get(reader)
        if known is not None and known.version >= version:
            return
        self._readers[reader] = _Reader(wanted, version, time.monotonic())
        self._forget_idle_readers()
        self._wake()

    def drop_reader(self, reader: str) -> None:
        self._readers.pop(reader, None)

    def read_filtered(
        self, epoch: str | None, after_seq: int, upto: int, wanted: ReaderFilter
    ) -> ListenResult:
        """Entries in ``(after_seq, upto]`` that ``wanted`` takes (a reader whose filter
        changed while its listen was out reads that range again with this)."""
        first, after_seq, reset = self._check_cursor(epoch, after_seq)
        entries = self.read(after_seq, max(0, upto - after_seq))
        cursor = entries[-1].seq if entries else after_seq
        return ListenResult(self.epoch, select(entries, wanted), self._head, first, reset, cursor)

    async def _listen_filtered(
        self, epoch: str | None, after_seq: int, timeout: float, limit: int, reader: str
    ) -> ListenResult:
        known = self._readers.get(reader)
        if known is None:
            first, _ = self._trimmed_view()
            return ListenResult(self.epoch, [], self._head, first, False, after_seq, UNKNOWN_READER)
        first, start, reset = self._check_cursor(epoch, after_seq)
        if reset:
            return ListenResult(self.epoch, [], self._head, first, True, start, known.version)
        deadline = time.monotonic() + timeout
        scanned, version = start, known.version
        # A reader that takes little of a busy log is answered (empty) every ``stretch``
        # entries, so its cursor stays well inside the history: a new filter re-reads the
        # range from that cursor, which must not have been trimmed meanwhile.
        stretch = min(SCAN_LIMIT, max(1, self.capacity // 4))
        while True:
            known = self._readers.get(reader)
            if known is None:
                return ListenResult(
                    self.epoch, [], self._head, first, False, after_seq, UNKNOWN_READER
                )
            known.seen = time.monotonic()
            if known.version != version:
                scanned, version = start, known.version  # a new filter: read the range again
            first, _ = self._trimmed_view()
            if scanned < first - 1:
                return ListenResult(self.epoch, [], self._head, first, True, scanned, version)
            chunk = self.read(scanned, start + stretch - scanned)
            taken = select(chunk, known.wanted)
            if len(taken) > limit:
                taken = taken[:limit]
                scanned = taken[-1].seq
            elif chunk:
                scanned = chunk[-1].seq
            if taken or scanned - start >= stretch:
                return ListenResult(self.epoch, taken, self._head, first, False, scanned, version)
            left = deadline - time.monotonic()
            if left <= 0:
                return ListenResult(self.epoch, [], self._head, first, False, scanned, version)
            try:
                async with asyncio.timeout(left):
                    await self._changed.wait()
            except TimeoutError:
                pass

    def _forget_idle_readers(self) -> None:
        stale = time.monotonic() - READER_IDLE_LIMIT
        for name in [n for n, r in self._readers.items() if r.seen < stale]:
            del self._readers[name]

    def _wake(self) -> None:
        # Replacing the event wakes every waiter once without a per-waiter list.
        self._changed.set()
        self._changed = asyncio.Event()

    def stats(self) -> dict[str, Any]:
        first, entries = self._trimmed_view()
        return {
            "epoch": self.epoch,
            "head": self._head,
            "oldest": first,
            "size": len(entries),
            "capacity": self.capacity,
            "fill": len(entries) / self.capacity,
            "total_appended": self.total_appended,
            "readers": len(self._readers),
        }
