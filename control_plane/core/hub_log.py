"""The event log core: ``seq``, ``epoch``, bounded history and cursor waits. No Ray here.

The EventHub actor (``hub_actor.py``) is a thin shell around :class:`EventLog`. Every event
is numbered once, serialised to its JSON frame once, and kept in a bounded history; readers
hold a cursor (the last ``seq`` they saw) and ask for everything after it. ``epoch`` names
one life of the log: when the log is new (a hub restarted without its store), old cursors
mean nothing and readers must be told so rather than silently skip. A hub restarted over
its store (``event_store.py``) restores the log in the same epoch
(:meth:`EventLog.restore`), and cursors go on. Retention is by count (``capacity``), by
the bytes of the frames (``max_bytes``, when set) and, when asked, by age
(:meth:`EventLog.expire`); the oldest go first.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable
from itertools import repeat
from operator import itemgetter
from typing import Any, NamedTuple

from control_plane.core.encoding import PROGRESS, Encoded, encode_event
from control_plane.core.event_store import StoredBatch
from control_plane.core.protocol import TYPE_RECEIVER_SETS, receivers_of_type

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
    ``broadcasts`` takes entries sent to every socket, ``clients`` those sent to one of these
    client ids (``None``: to any client, as a gateway replica wants).
    ``latest_progress`` keeps, of the ``job.progress`` entries of one channel in one read,
    only the last: a reader that keeps state (the controller) needs no more.
    """

    channels: frozenset[str] = frozenset()
    prefixes: tuple[str, ...] = ()
    broadcasts: bool = True
    clients: frozenset[str] | None = None
    latest_progress: bool = False


Taker = Callable[[str, str, str], bool]


def taker(wanted: ReaderFilter) -> Taker:
    """``take(channel, type, target)``: whether ``wanted`` takes such an entry.

    Which subscription channels take an entry on a channel is the protocol's rule
    (:func:`~control_plane.core.protocol.receivers_of_type` beside the entry's own channel);
    this only makes asking it cheap, as the hub asks for every entry a reader scans (millions
    a second, 100k in about 10 ms). Whether the filter takes every type (``*``) or none by type
    (only ``job:<id>``/``system``) is settled once here, the rest once per type (``by_type``):
    a dict hit per entry, as fast as the rule written out by hand.
    """
    channels = wanted.channels
    reached = [not channels.isdisjoint(answer) for answer in TYPE_RECEIVER_SETS]
    everything = all(reached)
    # event type -> whether a channel of ``wanted`` takes it whatever its channel; None when
    # no channel of ``wanted`` takes anything by type.
    by_type: dict[str, bool] | None = {} if any(reached) else None
    prefixes = wanted.prefixes
    broadcasts = wanted.broadcasts
    clients = wanted.clients

    def take(channel: str, event_type: str, target: str) -> bool:
        if not target:
            if everything or channel in channels:
                return True
            if by_type is not None:
                try:
                    if by_type[event_type]:
                        return True
                except KeyError:
                    hit = not channels.isdisjoint(receivers_of_type(event_type))
                    if by_type.setdefault(event_type, hit):
                        return True
            return bool(prefixes and channel.startswith(prefixes))
        if target == TARGET_ALL:
            return broadcasts
        if not target.startswith(CLIENT_TARGET_PREFIX):
            return False
        return clients is None or target[len(CLIENT_TARGET_PREFIX) :] in clients

    return take


SCAN_LIMIT = 65_536  # entries a filtered listen looks at, at most, per return
READER_IDLE_LIMIT = 600.0  # seconds: a reader not heard of this long is forgotten


class _Reader:
    __slots__ = ("seen", "version", "wanted")

    def __init__(self, wanted: ReaderFilter, version: int, seen: float) -> None:
        self.wanted = wanted
        self.version = version
        self.seen = seen


class EventLog:
    """Numbers events, keeps the newest ``capacity`` of them, and answers cursor reads.

    The history is kept in columns (type, channel, target, frame head and tail), so that an
    append costs a few list extends per batch, not an object per event; a :class:`LogEntry`,
    with its frame, is made only for what a reader is sent.
    """

    def __init__(
        self, capacity: int = 100_000, epoch: str | None = None, max_bytes: int | None = None
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        if max_bytes is not None and max_bytes < 1:
            raise ValueError("max_bytes must be at least 1")
        self.capacity = capacity
        self.max_bytes = max_bytes
        # Each entry's frame size; the oldest ``_skip`` entries are past a limit (hidden,
        # trimmed in chunks), holding ``_hidden_bytes``; the rest ``_retained_bytes``.
        self._sizes: list[int] = []
        self._skip = 0
        self._hidden_bytes = 0
        self._retained_bytes = 0
        self.epoch = epoch or uuid.uuid4().hex[:12]
        self._types: list[str] = []
        self._channels: list[str] = []
        self._targets: list[str] = []
        self._heads: list[str] = []
        self._tails: list[str] = []
        self._first_seq = 1  # seq of index 0 of the columns
        self._head = 0
        # (last seq, time.time()) of each batch, oldest first: for retention by age.
        self._stamps: deque[tuple[int, float]] = deque()
        self._changed = asyncio.Event()
        self.total_appended = 0
        self.appended_types: Counter[str] = Counter()  # for metrics: summed, never per event
        self._readers: dict[str, _Reader] = {}

    @property
    def head(self) -> int:
        """The last seq assigned (0 when nothing was appended yet)."""
        return self._head

    @property
    def oldest(self) -> int:
        """The oldest retained seq (``head + 1`` when the history is empty)."""
        return self._first_seq + self._hidden()

    def __len__(self) -> int:
        return len(self._types) - self._hidden()

    def append(
        self, events: Iterable[dict[str, Any]], target: str = TARGET_CHANNEL
    ) -> list[LogEntry]:
        """Number and store envelopes ``{type, timestamp, data}``; return the new entries."""
        before = self._head
        self.append_encoded([encode_event(e) for e in events], target)
        return self.read(before) if self._head > before else []

    def append_encoded(
        self, events: list[Encoded], target: str = TARGET_CHANNEL, at: float | None = None
    ) -> int:
        """Number and store events that :func:`encode_event` made (publishers encode, so the
        hub only splices the seq into each frame when it sends one); return the head.
        ``at`` is when they were appended (``time.time()``), for :meth:`expire`."""
        if not events:
            return self._head
        count = self._extend(events, target, time.time() if at is None else at)
        self._head += count
        self.total_appended += count
        self.appended_types.update(map(itemgetter(0), events))  # ~50 ns an event
        self._retain()
        self._wake()
        return self._head

    def _retain(self) -> None:
        """Hide the oldest entries past ``capacity`` and past ``max_bytes`` (but the newest
        one), and trim them in chunks so that appends stay amortised O(1)."""
        sizes, skip = self._sizes, self._skip
        floor = len(sizes) - self.capacity
        if floor > skip:
            moved = sum(sizes[skip:floor])
            self._retained_bytes -= moved
            self._hidden_bytes += moved
            skip = floor
        budget = self.max_bytes
        if budget is not None:
            last = len(sizes) - 1
            while self._retained_bytes > budget and skip < last:
                self._retained_bytes -= sizes[skip]
                self._hidden_bytes += sizes[skip]
                skip += 1
        self._skip = skip
        if (
            skip > max(1, self.capacity // 10)
            or (skip > 0 and self.capacity < 10)
            or (budget is not None and self._hidden_bytes > budget // 10)
        ):
            self._drop_through(self._first_seq + skip - 1)

    def _extend(self, events: list[Encoded], target: str, at: float) -> int:
        """Add ``events`` to the columns, stamped ``at``, as the seqs after the last stored
        one; return how many."""
        types, channels, heads, tails = zip(*events, strict=True)
        self._types.extend(types)
        self._channels.extend(channels)
        self._heads.extend(heads)
        self._tails.extend(tails)
        self._targets.extend(repeat(target, len(types)))
        sizes = [len(head) + len(tail) for head, tail in zip(heads, tails, strict=True)]
        self._sizes.extend(sizes)
        self._retained_bytes += sum(sizes)
        self._stamps.append((self._first_seq + len(self._types) - 1, at))
        return len(types)

    def _drop_through(self, seq: int) -> None:
        """Forget the entries up to ``seq``."""
        count = min(len(self._types), seq - self._first_seq + 1)
        if count <= 0:
            return
        sizes, skip = self._sizes, self._skip
        self._hidden_bytes -= sum(sizes[: min(count, skip)])
        if count > skip:
            self._retained_bytes -= sum(sizes[skip:count])
        self._skip = max(0, skip - count)
        for column in (self._types, self._channels, self._targets, self._heads, self._tails, sizes):
            del column[:count]
        self._first_seq += count
        stamps = self._stamps
        while stamps and stamps[0][0] < self._first_seq:
            stamps.popleft()

    def expire(self, before: float) -> int:
        """Retention by age: forget the batches appended before ``before`` (a
        ``time.time()``); return the oldest retained seq."""
        stamps, through = self._stamps, 0
        while stamps and stamps[0][1] < before:
            through = stamps.popleft()[0]
        self._drop_through(through)
        return self.oldest

    def restore(self, head: int, batches: Iterable[StoredBatch]) -> None:
        """Take back what a store kept (``event_store.py``): its batches, contiguous and
        oldest first, and the last seq ever assigned. Only a log that holds nothing yet."""
        if self._head or self._types:
            raise RuntimeError("only an empty log can be restored")
        batches = list(batches)
        self._first_seq = batches[0].first_seq if batches else head + 1
        for batch in batches:
            if batch.events:
                self._extend(batch.events, batch.target, batch.at)
        self._head = self._first_seq + len(self._types) - 1
        if self._head != head:
            raise ValueError(f"the restored batches end at {self._head}, the head is {head}")
        self._retain()
        self._drop_through(self._first_seq + self._skip - 1)

    def _hidden(self) -> int:
        """Entries past a limit not trimmed yet (the trim is chunked): not retained."""
        return self._skip

    def _trimmed_view(self) -> tuple[int, int]:
        """(oldest retained seq, its index in the columns)."""
        hidden = self._hidden()
        return self._first_seq + hidden, hidden

    def _entry(self, index: int) -> LogEntry:
        seq = self._first_seq + index
        return LogEntry(
            seq,
            self._channels[index],
            self._types[index],
            self._targets[index],
            f'{self._heads[index]},"seq":{seq}{self._tails[index]}',
        )

    def _index_range(self, after_seq: int, limit: int | None) -> range:
        """Column indexes of the retained entries with ``seq > after_seq``, at most ``limit``."""
        lo = max(self._hidden(), after_seq - self._first_seq + 1)
        hi = len(self._types) if limit is None else min(len(self._types), lo + max(0, limit))
        return range(lo, max(lo, hi))

    def _taken(self, indexes: range, wanted: ReaderFilter, limit: int) -> tuple[list[int], int]:
        """(the indexes in ``indexes`` whose entries ``wanted`` takes, at most ``limit``;
        the last index looked at, or ``indexes.start - 1``)."""
        take = taker(wanted)
        lo, hi = indexes.start, indexes.stop
        taken = [
            i
            for i, channel, event_type, target in zip(
                indexes,
                self._channels[lo:hi],
                self._types[lo:hi],
                self._targets[lo:hi],
                strict=True,
            )
            if take(channel, event_type, target)
        ]
        last = hi - 1
        if len(taken) > limit:
            del taken[limit:]
            last = taken[-1]
        if wanted.latest_progress:
            types, channels = self._types, self._channels
            newest = {channels[i]: i for i in taken if types[i] == PROGRESS}
            taken = [i for i in taken if types[i] != PROGRESS or newest[channels[i]] == i]
        return taken, last

    def covers(self, after_seq: int) -> bool:
        """True when every event after ``after_seq`` is still retained. ``0`` asks for the
        oldest retained, whatever it is, so it is always covered."""
        if after_seq == 0:
            return True
        first, _ = self._trimmed_view()
        return after_seq >= first - 1 and after_seq <= self._head

    def read(self, after_seq: int, limit: int | None = None) -> list[LogEntry]:
        """Entries with ``seq > after_seq`` (from the oldest retained if it is older)."""
        return [self._entry(i) for i in self._index_range(after_seq, limit)]

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
        entries = self.read_taken(after_seq, wanted, upto - after_seq)
        cursor = max(after_seq, min(upto, self._head))
        return ListenResult(self.epoch, entries, self._head, first, reset, cursor)

    def read_taken(
        self, after_seq: int, wanted: ReaderFilter, limit: int | None = None
    ) -> list[LogEntry]:
        """What ``wanted`` takes of the retained entries after ``after_seq`` (of at most
        ``limit`` looked at); only those are made into entries."""
        indexes = self._index_range(after_seq, limit)
        taken, _ = self._taken(indexes, wanted, len(indexes))
        return [self._entry(i) for i in taken]

    def replay(
        self,
        after_seq: int,
        channels: list[str],
        epoch: str | None = None,
        client_id: str | None = None,
        upto: int | None = None,
    ) -> dict[str, Any]:
        """Retained entries after ``after_seq`` (up to ``upto``) for a subscribe with
        ``since`` or a socket catching up: those on ``channels``, broadcasts, and those sent
        to ``client_id``.

        ``recovered`` is False when the history no longer reaches back to ``after_seq`` or
        the caller's epoch is not this log's; a cursor from another epoch means nothing
        here, so the replay then starts from the oldest retained entry.
        """
        other_epoch = epoch is not None and epoch != self.epoch
        if other_epoch:
            after_seq = 0
        recovered = self.covers(after_seq) and not other_epoch
        mine = frozenset((client_id,) if client_id else ())
        limit = None if upto is None else max(0, upto - after_seq)
        wanted = ReaderFilter(frozenset(channels), clients=mine)
        entries = self.read_taken(after_seq, wanted, limit)
        return {
            "epoch": self.epoch,
            "entries": entries,
            "head": self._head,
            "oldest": self.oldest,
            "recovered": recovered,
        }

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
            indexes = self._index_range(scanned, start + stretch - scanned)
            taken, last = self._taken(indexes, known.wanted, limit)
            if indexes:
                scanned = self._first_seq + last
            if taken or scanned - start >= stretch:
                entries = [self._entry(i) for i in taken]
                return ListenResult(self.epoch, entries, self._head, first, False, scanned, version)
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

    def frame_bytes(self) -> int:
        """Characters (bytes: frames are ASCII) of the retained frames; O(size), for a
        once-a-second gauge, not a hot path."""
        return sum(map(len, self._heads)) + sum(map(len, self._tails))

    def stats(self) -> dict[str, Any]:
        size = len(self)
        return {
            "epoch": self.epoch,
            "head": self._head,
            "oldest": self.oldest,
            "size": size,
            "capacity": self.capacity,
            "fill": size / self.capacity,
            "bytes": self._retained_bytes,
            "max_bytes": self.max_bytes,
            "total_appended": self.total_appended,
            "readers": len(self._readers),
        }
