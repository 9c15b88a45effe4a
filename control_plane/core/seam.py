"""The replay seam of one socket: each seq at most once, and with ``since`` no gap. No Ray here.

A socket gets entries two ways: live, from the replica's one hub reader (every entry after
the reader's cursor that the socket's subscriptions take), and replayed, when it subscribes
with ``since`` (the retained entries after ``since`` up to the reader's cursor at the time
of the subscribe, ``live_from``). Two things make that exactly once:

* :class:`Coverage` remembers, per subscription key (a channel, or broadcasts, or entries
  sent to this client), the seq ranges the socket was given. A replay leaves out what a key
  the socket already held covered: subscribing to ``*`` after ``job:a`` does not send
  ``job:a``'s events again, and a second subscribe with ``since`` does not repeat the first's
  replay.
* :class:`ReplayMerge` holds live entries back while replays are being read, then sends the
  replays and the held entries in seq order, each seq once. Its states::

      LIVE ──hold()──▶ HOLDING ──last replay in──▶ DRAINING ──buffer empty──▶ LIVE
       │                ▲   │ hold()                   │ hold()
       │                └───┘◀─────────────────────────┘
       │ queue full     ▲ last round: hold()
       └──────────▶ CATCHING_UP ◀─┐ rounds of the hub's history, live entries dropped
                           └──────┘

A socket whose send queue overflows while it reads is not cut off: it goes on from the hub's
history, which is the buffer (Kafka consumers and Centrifugo's recovery read the log the
same way). Live entries are dropped meanwhile, rounds of history are read after its last
queued entry as the writer makes room, and the last round holds live entries and merges them
like a replay. When more than a queue's worth piles up behind that drain (the client reads
slower than the events come), it goes back to the rounds after the last entry it queued:
the history holds them, the replica need not. The drain of a subscribe's replay does the
same once it has queued past the replay (the entries before it came from no round: only
the replay has them). Only a client that the history leaves behind, or that reads nothing,
is closed as slow.

``tests/unit/test_seam.py`` drives both, with the subscription index and a log, through
random interleavings of subscribes, unsubscribes, live batches and replies (hypothesis).
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

from control_plane.core.hub_log import CLIENT_TARGET_PREFIX, TARGET_ALL, LogEntry
from control_plane.core.protocol import receiving_channels

# Coverage keys beside channels: what a socket gets whatever it subscribed to.
BROADCASTS = TARGET_ALL
DIRECT = CLIENT_TARGET_PREFIX
MAX_RANGES = 256  # closed ranges per key; a socket that subscribes more forgets the oldest


def coverage_keys(entry: LogEntry) -> tuple[str, ...]:
    """The keys through which a socket may have been given ``entry``."""
    if entry.target == TARGET_ALL:
        return (BROADCASTS,)
    if entry.target.startswith(CLIENT_TARGET_PREFIX):
        return (DIRECT,)
    return receiving_channels(entry.channel, entry.type)


class Coverage:
    """Per key, what a socket was given: an open range ``(open_from, ∞)`` while the key is
    live, and closed ranges ``(lo, hi]`` (replays, live periods that ended, and what the
    client said it has: ``since``)."""

    __slots__ = ("_closed", "_open")  # two a socket, 10,000 sockets a replica

    def __init__(self) -> None:
        self._open: dict[str, int] = {}
        self._closed: dict[str, list[tuple[int, int]]] = {}

    def open(self, key: str, after: int) -> None:
        """``key`` is live from ``after`` on (exclusive). A key already live stays as it is."""
        self._open.setdefault(key, after)

    def close(self, key: str, at: int) -> None:
        """``key`` stops being live; it covered up to ``at``."""
        after = self._open.pop(key, None)
        if after is not None:
            self.add(key, after, at)

    def add(self, key: str, lo: int, hi: int) -> None:
        """``key`` was given ``(lo, hi]``."""
        if hi <= lo:
            return
        ranges = self._closed.setdefault(key, [])
        for i, (a, b) in enumerate(ranges):
            if a <= hi and lo <= b:  # overlapping or touching: one range
                ranges[i] = (min(a, lo), max(b, hi))
                return
        ranges.append((lo, hi))
        del ranges[:-MAX_RANGES]

    def covers(self, key: str, seq: int) -> bool:
        after = self._open.get(key)
        return (after is not None and seq > after) or self.covered_before(key, seq)

    def covered_before(self, key: str, seq: int) -> bool:
        """Whether a closed range of ``key`` holds ``seq``."""
        return any(lo < seq <= hi for lo, hi in self._closed.get(key, ()))

    def given(self, entry: LogEntry) -> bool:
        """Whether the socket was given ``entry`` already (through any key)."""
        return any(self.covers(key, entry.seq) for key in coverage_keys(entry))

    def given_before(self, entry: LogEntry) -> bool:
        """Whether a closed range (a replay, a live period that ended) holds ``entry``."""
        return any(self.covered_before(key, entry.seq) for key in coverage_keys(entry))


class Offer(StrEnum):
    SEND = "send"  # queue it now
    HELD = "held"  # held by the merge, sent with the replay
    DROP = "drop"  # the client has it already


class MergeState(StrEnum):
    LIVE = "live"  # live entries go straight to the socket
    HOLDING = "holding"  # replays are being read: live entries wait, in order
    DRAINING = "draining"  # replays and held entries go out in seq order
    CATCHING_UP = "catching up"  # its queue overflowed: it reads from the hub's history


class ReplayMerge:
    """Holds live entries while replays are read; gives them out merged, each seq once."""

    __slots__ = ("_held", "_pending", "max_held", "state")

    def __init__(self, max_held: int) -> None:
        self.state = MergeState.LIVE
        self.max_held = max_held
        self._pending = 0  # replays asked for, not in yet
        self._held: dict[int, LogEntry] = {}

    @property
    def pending(self) -> int:
        return self._pending

    def __len__(self) -> int:
        return len(self._held)

    def hold(self) -> None:
        """A replay is being read: hold live entries until it is in."""
        self._pending += 1
        if self.state in (MergeState.LIVE, MergeState.CATCHING_UP):
            self.state = MergeState.HOLDING

    def live(self, entry: LogEntry) -> Offer:
        """SEND ``entry`` now, or it is HELD (see :attr:`overflowing`), or DROPped while
        catching up (a round of history brings it)."""
        if self.state is MergeState.LIVE:
            return Offer.SEND
        if self.state is MergeState.CATCHING_UP:
            return Offer.DROP
        self._held[entry.seq] = entry
        return Offer.HELD

    def catch_up(self) -> None:
        """The send queue overflowed (only a LIVE socket's can): read the history instead."""
        assert self.state is MergeState.LIVE and not self._held, self.state
        self.state = MergeState.CATCHING_UP

    def back_to_history(self) -> None:
        """A drain after the last round of history fell behind: drop what it holds and go
        on reading the history (only a DRAINING merge, whose replays are all in, may)."""
        assert self.state is MergeState.DRAINING and not self._pending, self.state
        self._held.clear()
        self.state = MergeState.CATCHING_UP

    @property
    def overflowing(self) -> bool:
        return len(self._held) > self.max_held

    def replayed(self, entries: Iterable[LogEntry]) -> bool:
        """A replay is in; True when the caller should drain now (no other replay pending
        and no drain running)."""
        for entry in entries:
            self._held.setdefault(entry.seq, entry)
        self._pending = max(0, self._pending - 1)
        if self._pending == 0 and self.state is MergeState.HOLDING:
            self.state = MergeState.DRAINING
            return True
        return False

    def next_batch(self) -> list[LogEntry]:
        """The held entries in seq order, for the drain. Empty when the drain should stop:
        nothing is held (the socket is live again), or another replay was asked for
        meanwhile (what is held waits for it, and its arrival starts the next drain)."""
        if self.state is MergeState.CATCHING_UP:
            return []
        if self._pending:
            self.state = MergeState.HOLDING
            return []
        if not self._held:
            self.state = MergeState.LIVE
            return []
        batch = [self._held[seq] for seq in sorted(self._held)]
        self._held.clear()
        return batch


class SocketSeam:
    """One socket's side of the seam: its :class:`Coverage` and :class:`ReplayMerge`, and
    the steps of a subscribe, in the order the session takes them."""

    __slots__ = (
        "claimed",
        "coverage",
        "drain_floor",
        "floor",
        "merge",
        "rejoin_limit",
        "rejoining",
        "resume_after",
    )

    def __init__(self, max_held: int, rejoin_limit: int | None = None) -> None:
        self.coverage = Coverage()
        self.merge = ReplayMerge(max_held)
        # Catching up, entries held behind the last round's drain before it goes back to
        # the history.
        self.rejoin_limit = max_held if rejoin_limit is None else rejoin_limit
        self.rejoining = False  # from falling behind until the socket is live again
        # What the client said it has (``since``), per key. The replica's reader may be
        # behind a ``since`` (its filter took nothing for a while, so its cursor stayed):
        # live entries up to ``floor``, the highest one, are checked against what it said.
        self.claimed = Coverage()
        self.floor = 0
        self.resume_after = 0  # the last entry a round or a drain queued
        # A drain goes back to the history only once it queued an entry past this: a
        # replay (up to its ``live_from``) or an unsubscribe (up to the reader's cursor) says
        # the socket was given entries that only the drain holds until then.
        self.drain_floor = 0

    def went_live(self, cursor: int) -> None:
        """The socket gets broadcasts and its own ``send_to_client`` events after ``cursor``."""
        self.coverage.open(BROADCASTS, cursor)
        self.coverage.open(DIRECT, cursor)

    def subscribed(self, channels: Iterable[str], live_from: int, since: int | None) -> None:
        """``channels`` are live after ``live_from`` (the reader's cursor when the index took
        them). With ``since``, the client has every entry up to it on those channels (and
        its broadcasts), and live entries are held until the replay is in."""
        channels = list(channels)
        for channel in channels:
            self.coverage.open(channel, live_from)
        if since is not None:
            for key in (*channels, BROADCASTS, DIRECT):
                self.claimed.add(key, 0, since)
            self.floor = max(self.floor, since)
            self.merge.hold()

    def unsubscribed(self, channels: Iterable[str], cursor: int) -> None:
        """``channels`` stop; the socket was given their entries up to the reader's
        ``cursor``, or, catching up, up to the last one queued."""
        at = min(cursor, self.resume_after) if self.rejoining else cursor
        for channel in channels:
            self.coverage.close(channel, at)
        self.drain_floor = max(self.drain_floor, at)

    def replayed(
        self,
        channels: Iterable[str],
        entries: Iterable[LogEntry],
        *,
        start: int,
        live_from: int,
    ) -> tuple[int, bool]:
        """The hub's replay of ``channels`` after ``start`` is in: keep what this socket was
        not given and what will not come live (seq up to ``live_from``). Returns (entries
        kept, whether the caller drains now)."""
        kept = [
            e
            for e in entries
            if e.seq <= live_from and not self.coverage.given(e) and not self._has(e)
        ]
        for key in (*channels, BROADCASTS, DIRECT):
            self.coverage.add(key, start, live_from)
        self.drain_floor = max(self.drain_floor, live_from)
        return len(kept), self.merge.replayed(kept)

    def replay_failed(self) -> bool:
        """A replay that will not come (the request failed); True: drain now."""
        return self.merge.replayed(())

    def hold_for_snapshots(self) -> None:
        """A subscribe without ``since`` is fetching job snapshots: live entries wait, so
        that each snapshot reaches the client before the events that follow it."""
        self.merge.hold()

    def snapshots_sent(self) -> bool:
        """The snapshots are queued (or failed); True: drain what was held now."""
        return self.merge.replayed(())

    def live(self, entry: LogEntry) -> Offer:
        """What to do with a live entry for this socket."""
        if self._has(entry):
            return Offer.DROP
        merge = self.merge
        if (
            merge.state is MergeState.DRAINING
            and len(merge) >= self.rejoin_limit
            and not merge.pending  # a replay asked for during the drain: it has a floor too
            and (self.rejoining or self.resume_after > self.drain_floor)
        ):
            # Rounds go on after the last entry queued (sent()): the drain is past its
            # floor, so all before that entry was queued, and nothing after it.
            merge.back_to_history()
            self.rejoining = True
        return merge.live(entry)

    def sent(self, entry: LogEntry) -> None:
        """``entry`` was queued for the socket (from a round or a drain, in seq order)."""
        self.resume_after = max(self.resume_after, entry.seq)

    # --- catching up -----------------------------------------------------------------------

    @property
    def catching_up(self) -> bool:
        return self.merge.state is MergeState.CATCHING_UP

    def fell_behind(self, entry: LogEntry) -> bool:
        """``entry`` found the send queue full. True: catch up from the history after the
        entry before it (the caller starts the rounds); False: it cannot (a replay is under
        way), and the socket is closed as slow."""
        if self.merge.state is not MergeState.LIVE:
            return False
        self.merge.catch_up()
        self.rejoining = True
        self.resume_after = entry.seq - 1
        return True

    def catch_up_round(self, cursor: int, chunk: int) -> tuple[int, int, bool]:
        """The next round: read the history in ``(after, upto]``. The last round (it reaches
        the reader's ``cursor``) holds live entries from now on, as a replay does."""
        after = self.resume_after
        last = cursor - after <= chunk
        if last:
            self.merge.hold()
        return after, (cursor if last else after + chunk), last

    def caught_up(
        self, entries: Iterable[LogEntry], upto: int, last: bool
    ) -> tuple[list[LogEntry], bool]:
        """A round is in: (the entries to queue now, whether to drain now). The last round's
        entries go through the merge with the held ones; until they are queued,
        ``resume_after`` stays at the last entry queued (:meth:`sent`)."""
        kept = [
            e
            for e in entries
            if e.seq <= upto and not self._has(e) and not self.coverage.given_before(e)
        ]
        if last:
            return [], self.merge.replayed(kept)
        self.resume_after = upto
        return kept, False

    def next_batch(self) -> list[LogEntry]:
        """The next batch of the drain (see :meth:`ReplayMerge.next_batch`), without what
        the client said it has since those entries were held."""
        while batch := self.merge.next_batch():
            kept = [e for e in batch if not self._has(e)]
            if kept:
                return kept
        if self.merge.state is MergeState.LIVE:
            self.rejoining = False
        return []

    def claimed_since(self, entry: LogEntry) -> bool:
        """The client said it has ``entry`` (a subscribe with ``since``), perhaps after the
        drain took it into a batch: the drain checks each entry again as it queues it."""
        return self._has(entry)

    def _has(self, entry: LogEntry) -> bool:
        """The client said it has ``entry`` (a ``since`` at or past it)."""
        return entry.seq <= self.floor and self.claimed.given(entry)
