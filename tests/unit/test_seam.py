"""The replay seam, Ray-free: coverage, the merge's states, and a property test that drives
a replica's parts (the hub's log, the subscription index, each socket's seam) through random
interleavings of appends, live batches, subscribes with and without ``since``, unsubscribes,
replay replies in any order and drain steps. Each socket must get each seq at most once, and
every entry of every channel it holds after where that channel's subscription started."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import example, given, settings
from hypothesis import strategies as st

from control_plane.core.hub_log import TARGET_ALL, TARGET_CHANNEL, EventLog, LogEntry, ReaderFilter
from control_plane.core.hub_log import client_target as to_client
from control_plane.core.protocol import make_event
from control_plane.core.routing import SubscriptionIndex, matches
from control_plane.core.seam import (
    Coverage,
    MergeState,
    Offer,
    ReplayMerge,
    SocketSeam,
)


def entry(seq: int, channel: str = "job:a", event_type: str = "job.progress") -> LogEntry:
    return LogEntry(seq, channel, event_type, TARGET_CHANNEL, f'{{"seq":{seq}}}')


# --- Coverage --------------------------------------------------------------------------------


def test_coverage_of_a_live_key_starts_after_its_cursor_and_ends_where_it_closed() -> None:
    c = Coverage()
    c.open("job:a", 10)
    assert not c.covers("job:a", 10) and c.covers("job:a", 11) and c.covers("job:a", 10**9)
    c.close("job:a", 20)
    assert c.covers("job:a", 20) and not c.covers("job:a", 21)
    c.open("job:a", 30)
    assert not c.covers("job:a", 25) and c.covers("job:a", 31)
    assert c.covered_before("job:a", 15) and not c.covered_before("job:a", 31)


def test_an_entry_is_given_through_any_key_that_receives_it() -> None:
    c = Coverage()
    c.open("*", 5)
    assert c.given(entry(6, "job:b"))
    c2 = Coverage()
    c2.open("jobs", 0)
    assert c2.given(entry(3, "job:b", "job.started"))
    assert not c2.given(entry(3, "job:b", "job.progress"))


def test_reopening_a_live_key_keeps_its_older_start_and_replays_add_ranges() -> None:
    c = Coverage()
    c.open("job:a", 10)
    c.open("job:a", 50)  # subscribed again: still live from 10
    assert c.covers("job:a", 11)
    c.add("job:a", 2, 10)
    assert c.covers("job:a", 3) and not c.covers("job:a", 2)


# --- ReplayMerge -----------------------------------------------------------------------------


def test_the_merge_holds_live_entries_during_a_replay_then_gives_all_in_seq_order() -> None:
    m = ReplayMerge(max_held=100)
    assert m.live(entry(1)) is Offer.SEND
    m.hold()
    assert m.state is MergeState.HOLDING
    assert m.live(entry(9)) is m.live(entry(7)) is Offer.HELD
    assert m.replayed([entry(3), entry(2), entry(7)])  # the last replay in: drain
    assert m.state is MergeState.DRAINING
    assert [e.seq for e in m.next_batch()] == [2, 3, 7, 9]
    assert m.live(entry(10)) is Offer.HELD  # held while draining
    assert [e.seq for e in m.next_batch()] == [10]
    assert m.next_batch() == [] and m.state is MergeState.LIVE


def test_a_replay_asked_for_during_a_drain_stops_it_until_that_replay_is_in() -> None:
    m = ReplayMerge(max_held=100)
    m.hold()
    assert m.replayed([entry(1)])
    m.hold()  # a second subscribe with since, while the first drains
    assert m.next_batch() == [] and m.state is MergeState.HOLDING
    assert m.replayed([entry(2)])
    assert [e.seq for e in m.next_batch()] == [1, 2]


def test_two_replays_drain_once_when_both_are_in() -> None:
    m = ReplayMerge(max_held=100)
    m.hold()
    m.hold()
    assert not m.replayed([entry(5)])
    assert m.replayed([entry(4)])


def test_a_socket_catching_up_drops_live_entries_until_its_last_round_holds_them() -> None:
    seam = SocketSeam(max_held=100)
    seam.subscribed(["job:a"], 0, None)
    assert seam.live(entry(1)) is Offer.SEND
    assert seam.fell_behind(entry(2))  # its queue is full: it reads the history from 1 on
    assert seam.live(entry(3)) is Offer.DROP
    assert seam.catch_up_round(cursor=10, chunk=4) == (1, 5, False)
    kept, drain = seam.caught_up([entry(q) for q in range(2, 6)], 5, False)
    assert [e.seq for e in kept] == [2, 3, 4, 5] and not drain
    assert seam.catch_up_round(cursor=10, chunk=8) == (5, 10, True)
    assert seam.live(entry(11)) is Offer.HELD  # after the reader's cursor: held
    kept, drain = seam.caught_up([entry(q) for q in range(6, 11)], 10, True)
    assert kept == [] and drain
    assert [e.seq for e in seam.next_batch()] == [6, 7, 8, 9, 10, 11]
    assert seam.next_batch() == [] and seam.live(entry(12)) is Offer.SEND


def test_a_drain_that_falls_behind_after_the_last_round_goes_back_to_the_history() -> None:
    seam = SocketSeam(max_held=100, rejoin_limit=3)
    seam.subscribed(["job:a"], 0, None)
    assert seam.fell_behind(entry(1))  # nothing queued yet: the history from 0 on
    assert seam.catch_up_round(cursor=4, chunk=8) == (0, 4, True)
    _, drain = seam.caught_up([entry(q) for q in range(1, 5)], 4, True)
    assert drain
    batch = seam.next_batch()
    assert [e.seq for e in batch] == [1, 2, 3, 4]
    seam.sent(batch[0])
    seam.sent(batch[1])  # the client reads slowly: two of four are queued ...
    assert [seam.live(entry(q)) for q in (5, 6, 7)] == [Offer.HELD] * 3
    assert seam.live(entry(8)) is Offer.DROP  # ... and three more wait: back to the rounds
    assert seam.catching_up and seam.next_batch() == []
    assert seam.catch_up_round(cursor=8, chunk=8) == (2, 8, True)  # after the last queued
    _, drain = seam.caught_up([entry(q) for q in range(3, 9)], 8, True)
    assert drain and [e.seq for e in seam.next_batch()] == [3, 4, 5, 6, 7, 8]
    assert seam.next_batch() == [] and not seam.rejoining
    assert seam.live(entry(9)) is Offer.SEND


def test_a_subscribe_drain_that_falls_behind_past_its_replay_goes_back_to_the_history() -> None:
    seam = SocketSeam(max_held=100, rejoin_limit=3)
    seam.went_live(0)
    seam.subscribed(["job:a"], live_from=4, since=0)  # replay (0, 4], live held after 4
    assert seam.live(entry(5)) is Offer.HELD
    _, drain = seam.replayed(["job:a"], [entry(q) for q in range(1, 5)], start=0, live_from=4)
    batch = seam.next_batch()
    assert drain and [e.seq for e in batch] == [1, 2, 3, 4, 5]
    for e in batch[:3]:
        seam.sent(e)  # the client reads slowly: the replay is not all queued ...
    assert [seam.live(entry(q)) for q in (6, 7, 8, 9)] == [Offer.HELD] * 4
    assert not seam.catching_up  # ... and only the replay has 4: no round would bring it
    for e in batch[3:]:
        seam.sent(e)  # past the replay
    assert seam.live(entry(10)) is Offer.DROP  # four wait behind it: back to the rounds
    assert seam.catching_up and seam.rejoining and seam.next_batch() == []
    assert seam.catch_up_round(cursor=10, chunk=8) == (5, 10, True)  # after the last queued
    _, drain = seam.caught_up([entry(q) for q in range(6, 11)], 10, True)
    assert drain and [e.seq for e in seam.next_batch()] == [6, 7, 8, 9, 10]
    assert seam.next_batch() == [] and not seam.rejoining
    assert seam.live(entry(11)) is Offer.SEND


def test_an_unsubscribe_during_a_drain_keeps_it_until_the_drain_is_past_the_cursor() -> None:
    seam = SocketSeam(max_held=100, rejoin_limit=2)
    seam.went_live(0)
    seam.subscribed(["job:a", "*"], live_from=0, since=0)
    for q in (1, 2):
        seam.live(entry(q))
    seam.replayed(["job:a", "*"], [], start=0, live_from=0)
    batch = seam.next_batch()
    seam.sent(batch[0])
    # Unsubscribed at the reader's cursor 2: entry 2 is the drain's to send, not a round's
    # (the closed range says job:a's 2 was given).
    seam.unsubscribed(["job:a"], cursor=2)
    assert [seam.live(entry(q)) for q in (3, 4, 5)] == [Offer.HELD] * 3
    seam.sent(batch[1])
    assert seam.live(entry(6)) is Offer.HELD  # at the cursor, not past it: the drain goes on
    batch = seam.next_batch()
    assert [e.seq for e in batch] == [3, 4, 5, 6]
    seam.sent(batch[0])
    assert [seam.live(entry(q)) for q in (7, 8, 9)] == [Offer.HELD, Offer.HELD, Offer.DROP]
    assert seam.catching_up and seam.catch_up_round(cursor=9, chunk=8) == (3, 9, True)


def test_a_socket_cannot_catch_up_while_a_replay_is_under_way() -> None:
    seam = SocketSeam(max_held=100)
    seam.subscribed(["job:a"], 0, since=0)
    assert not seam.fell_behind(entry(1))


def test_the_merge_says_when_it_holds_too_much() -> None:
    m = ReplayMerge(max_held=2)
    m.hold()
    for seq in (1, 2, 3):
        m.live(entry(seq))
    assert m.overflowing


# --- the property ----------------------------------------------------------------------------

CHANNELS = ["job:a", "job:b", "system", "jobs", "*"]
TYPES = ["job.progress", "job.started", "agent.output", "system.alert"]
CLIENTS = ["c0", "c1", "c2"]


@dataclass
class Sock:
    seam: SocketSeam
    connected_at: int
    sent: list[int] = field(default_factory=list)
    start: dict[str, int] = field(default_factory=dict)  # channel -> its stream starts after
    draining: bool = False
    batch: list[LogEntry] = field(default_factory=list)  # the drain's batch, being queued
    # (channels, since, how many frames were sent before that subscribe)
    claims: list[tuple[list[str], int, int]] = field(default_factory=list)
    full: bool = False  # its send queue is full: the next live entry overflows it
    closed: bool = False  # closed as slow: it is owed nothing more


@dataclass
class Replica:
    log: EventLog = field(default_factory=lambda: EventLog(capacity=100_000))
    index: SubscriptionIndex = field(default_factory=SubscriptionIndex)
    socks: dict[str, Sock] = field(default_factory=dict)
    cursor: int = 0
    pending: list[tuple[str, list[str], int, int]] = field(default_factory=list)

    def connect(self, client: str) -> None:
        sock = Sock(SocketSeam(max_held=10**9, rejoin_limit=4), self.cursor)
        sock.seam.went_live(self.cursor)
        self.socks[client] = sock
        self.index.add_client(client)

    def append(self, channel: str, event_type: str, target: str, n: int) -> None:
        job = channel.removeprefix("job:") if channel.startswith("job:") else "x"
        event = make_event(event_type, {"job_id": job, "status": "running"})
        event["channel"] = channel
        self.log.append([event] * n, target)

    def deliver(self, n: int) -> None:
        for e in self.log.read(self.cursor, n):
            for client in self.index.recipients(e):
                sock = self.socks[client]
                if sock.closed or sock.seam.live(e) is not Offer.SEND:
                    continue
                if not sock.full:
                    sock.sent.append(e.seq)
                elif sock.seam.fell_behind(e):
                    sock.full = False  # the writer makes room; rounds of history follow
                else:
                    sock.closed = True
            self.cursor = e.seq

    def subscribe(self, client: str, channels: list[str], since: int | None) -> None:
        sock = self.socks[client]
        if sock.seam.rejoining:
            return  # a real session's subscribe waits until it caught up and is live
        held = self.index.channels_of(client)
        self.index.subscribe(client, channels)
        live_from = self.cursor
        for ch in channels:
            begin = live_from if since is None else since
            sock.start[ch] = min(sock.start[ch], begin) if ch in held else begin
        sock.seam.subscribed(channels, live_from, since)
        if since is not None:
            sock.claims.append((channels, since, len(sock.sent)))
            self.pending.append((client, channels, since, live_from))

    def unsubscribe(self, client: str, channels: list[str]) -> None:
        sock = self.socks[client]
        self.index.unsubscribe(client, channels)
        sock.seam.unsubscribed(channels, self.cursor)
        for ch in channels:
            sock.start.pop(ch, None)

    def reply(self, i: int) -> None:
        client, channels, since, live_from = self.pending.pop(i % len(self.pending))
        wanted = ReaderFilter(frozenset(channels), clients=frozenset({client}))
        entries = self.log.read_taken(since, wanted)  # what the hub answers, up to its head
        sock = self.socks[client]
        _, drain = sock.seam.replayed(channels, entries, start=since, live_from=live_from)
        sock.draining = sock.draining or drain

    def catch_up_round(self, client: str, chunk: int) -> None:
        sock = self.socks[client]
        if not sock.seam.catching_up:
            return
        # A drain that went back to the history drops its batch before any round (the
        # session's rounds wait for it).
        sock.batch, sock.draining = [], False
        after, upto, last = sock.seam.catch_up_round(self.cursor, chunk)
        channels = sorted(self.index.channels_of(client))
        reply = self.log.replay(after, channels, None, client, upto)
        kept, drain = sock.seam.caught_up(reply["entries"], upto, last)
        for e in kept:
            self.send(sock, e)
        sock.draining = sock.draining or drain

    def send(self, sock: Sock, e: LogEntry) -> None:
        sock.sent.append(e.seq)
        sock.seam.sent(e)

    def drain_step(self, client: str, n: int = 10**9) -> None:
        """Queue up to ``n`` entries of the drain (a slow client takes a few at a time)."""
        sock = self.socks[client]
        if not sock.draining:
            return
        if sock.seam.catching_up:  # it went back to the history: the batch is dropped
            sock.batch, sock.draining = [], False
            return
        if not sock.batch:
            sock.batch = sock.seam.next_batch()
            if not sock.batch:
                sock.draining = False
                return
        for e in sock.batch[:n]:
            if not sock.seam.claimed_since(e):  # as the session checks each one
                self.send(sock, e)
        del sock.batch[:n]

    def settle(self) -> None:
        while self.pending:
            self.reply(0)
        self.deliver(10**9)
        for client, sock in self.socks.items():
            while sock.seam.catching_up or sock.draining:
                self.catch_up_round(client, 5)
                self.drain_step(client)


append_op = st.tuples(
    st.just("append"),
    st.sampled_from(["job:a", "job:b", "system"]),
    st.sampled_from(TYPES),
    st.sampled_from([TARGET_CHANNEL, TARGET_CHANNEL, TARGET_ALL, to_client("c1")]),
    st.integers(1, 4),
)
deliver_op = st.tuples(st.just("deliver"), st.integers(1, 6))
subscribe_op = st.tuples(
    st.just("subscribe"),
    st.sampled_from(CLIENTS),
    st.lists(st.sampled_from(CHANNELS), min_size=1, max_size=3, unique=True),
    st.one_of(st.none(), st.integers(0, 40)),
)
unsubscribe_op = st.tuples(
    st.just("unsubscribe"),
    st.sampled_from(CLIENTS),
    st.lists(st.sampled_from(CHANNELS), min_size=1, max_size=2, unique=True),
)
reply_op = st.tuples(st.just("reply"), st.integers(0, 10))
drain_op = st.tuples(st.just("drain"), st.sampled_from(CLIENTS), st.integers(1, 4))
overflow_op = st.tuples(st.just("overflow"), st.sampled_from(CLIENTS))
round_op = st.tuples(st.just("round"), st.sampled_from(CLIENTS), st.integers(1, 8))
# Weighted towards what makes seams: events, live batches, subscribes and their replies.
operation = st.one_of(
    append_op,
    append_op,
    deliver_op,
    deliver_op,
    subscribe_op,
    subscribe_op,
    unsubscribe_op,
    reply_op,
    reply_op,
    drain_op,
    overflow_op,
    round_op,
)


@settings(max_examples=300, deadline=None)
@given(st.lists(operation, min_size=10, max_size=80))
@example(  # two replays of one channel, the second after the first drained
    [
        ("append", "job:a", "job.progress", TARGET_CHANNEL, 3),
        ("deliver", 6),
        ("subscribe", "c0", ["job:a"], 0),
        ("reply", 0),
        ("drain", "c0"),
        ("drain", "c0"),
        ("subscribe", "c0", ["job:a"], 0),
        ("reply", 0),
    ]
)
@example(  # a subscribe's drain falls behind and goes back to the history; an unsubscribe
    # while its batch was half queued closed job:a at an entry only the drain had
    [
        ("append", "job:a", "job.progress", TARGET_CHANNEL, 4),
        ("append", "job:a", "job.progress", TARGET_CHANNEL, 4),
        ("subscribe", "c2", ["*", "job:a"], 0),
        ("deliver", 1),
        ("deliver", 1),
        ("reply", 0),
        ("append", "job:a", "job.progress", TARGET_CHANNEL, 4),
        ("append", "job:a", "job.progress", TARGET_CHANNEL, 4),
        ("append", "job:a", "job.progress", TARGET_CHANNEL, 4),
        ("drain", "c2", 1),
        ("unsubscribe", "c2", ["job:a"]),
    ]
)
@example(  # a subscribe with since, while a drain's batch is half queued
    [
        ("append", "job:a", "job.progress", TARGET_CHANNEL, 3),
        ("subscribe", "c1", ["job:a"], 0),
        ("deliver", 1),
        ("deliver", 1),
        ("reply", 0),
        ("drain", "c1", 1),
        ("subscribe", "c1", ["job:a"], 2),
    ]
)
def test_any_interleaving_gives_each_socket_each_seq_once_and_no_gap(ops: list[tuple]) -> None:
    r = Replica()
    for client in CLIENTS:
        r.connect(client)
    for op in ops:
        kind, *args = op
        if kind == "append":
            r.append(*args)
        elif kind == "deliver":
            r.deliver(*args)
        elif kind == "subscribe":
            client, channels, since = args
            r.subscribe(client, channels, None if since is None else min(since, r.log.head))
        elif kind == "unsubscribe":
            r.unsubscribe(*args)
        elif kind == "reply" and r.pending:
            r.reply(*args)
        elif kind == "drain":
            r.drain_step(*args)
        elif kind == "overflow":
            r.socks[args[0]].full = True
        elif kind == "round":
            r.catch_up_round(*args)
    r.settle()
    log = {e.seq: e for e in r.log.read(0)}

    def reaches(client: str, channels: list[str], e: LogEntry) -> bool:
        if e.target == TARGET_CHANNEL:
            return matches(channels, e.channel, e.type)
        return e.target in (TARGET_ALL, to_client(client))

    for client, sock in r.socks.items():
        assert len(sock.sent) == len(set(sock.sent)), f"{client} got a seq twice: {sock.sent}"
        if sock.closed:
            continue  # closed as slow: it resumes with since on a new socket
        had = set(sock.sent)
        for channels, since, sent_before in sock.claims:
            claimed = {q for q, e in log.items() if q <= since and reaches(client, channels, e)}
            again = claimed & set(sock.sent[sent_before:])
            assert not again, f"{client} was sent {again}, which it had (since {since})"
            had |= claimed
        for ch, begin in sock.start.items():
            wanted = {
                q
                for q, e in log.items()
                if q > begin and e.target == TARGET_CHANNEL and matches([ch], e.channel, e.type)
            }
            assert wanted <= had, f"{client} on {ch} after {begin} missed {wanted - had}"
        broadcasts = {
            q
            for q, e in log.items()
            if q > sock.connected_at and e.target in (TARGET_ALL, to_client(client))
        }
        assert broadcasts <= had, f"{client} missed broadcasts {broadcasts - had}"
