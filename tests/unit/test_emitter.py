"""EventEmitter with a fake transport: adaptive batching, order, urgency, flush, close, threads."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from control_plane.core.emitter import EventEmitter
from control_plane.core.errors import EventLogError, PublishError

pytestmark = pytest.mark.timeout(20)

WAIT = 5.0  # bound on every wait for something that should happen at once


class FakeHub:
    """``send`` records batches and returns a handle; ``wait`` records what it was asked."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.batches: list[list[dict[str, Any]]] = []
        self.waits: list[tuple[list[int], float]] = []
        self.gate: threading.Event | None = None  # when set up, send blocks until it is set
        self.fail_next = False
        self.refuse: Exception | None = None  # when set, wait raises it (a failed publish)
        self.unacknowledged = 0  # waits that raise TimeoutError (not done yet) first
        # When holding, a publish is done only once the test acknowledges it (ack()): until
        # then it is in flight, and a wait for it times out.
        self.holding = False
        self.acked: set[int] = set()
        self.max_outstanding = 0  # publishes sent and not acknowledged, at most (holding)

    def send(self, batch: list[dict[str, Any]]) -> int:
        with self.cond:
            if self.fail_next:
                self.fail_next = False
                self.cond.notify_all()
                raise ConnectionError("hub is gone")
            self.batches.append(list(batch))
            handle = len(self.batches)
            if self.holding:
                outstanding = handle - len(self.acked)
                self.max_outstanding = max(self.max_outstanding, outstanding)
            self.cond.notify_all()
            gate = self.gate
        if gate is not None:
            assert gate.wait(WAIT), "test left the gate closed"
        return handle

    def wait(self, handles: list[int], timeout: float) -> None:
        with self.cond:
            self.waits.append((list(handles), timeout))
            self.cond.notify_all()
            if self.unacknowledged > 0:
                self.unacknowledged -= 1
                raise TimeoutError
            done = lambda: not self.holding or all(h in self.acked for h in handles)  # noqa: E731
            if not self.cond.wait_for(done, timeout):
                raise TimeoutError
            if self.refuse is not None:
                raise self.refuse

    def hold(self) -> None:
        """From now on, publishes are in flight until ack() says they are done."""
        with self.cond:
            self.holding = True

    def ack(self, *handles: int) -> None:
        with self.cond:
            self.acked.update(handles)
            self.cond.notify_all()

    def release(self) -> None:
        """Every publish is done from now on."""
        with self.cond:
            self.holding = False
            self.cond.notify_all()

    def events(self) -> list[dict[str, Any]]:
        with self.cond:
            return [e for b in self.batches for e in b]

    def until(self, predicate: Callable[[], bool]) -> None:
        with self.cond:
            assert self.cond.wait_for(predicate, WAIT), "timed out"


@pytest.fixture
def hub() -> FakeHub:
    return FakeHub()


@pytest.fixture
def make(hub: FakeHub) -> Iterator[Callable[..., EventEmitter]]:
    made: list[EventEmitter] = []

    def factory(**kwargs: Any) -> EventEmitter:
        emitter = EventEmitter(hub.send, hub.wait, **kwargs)
        made.append(emitter)
        return emitter

    yield factory
    if hub.gate is not None:
        hub.gate.set()
    hub.release()
    for emitter in made:
        with contextlib.suppress(PublishError):  # an emitter a test made fail
            emitter.close(timeout=WAIT)
        assert not emitter._thread.is_alive()
        assert not emitter._acker.is_alive()


def n(i: int) -> dict[str, Any]:
    return {"type": "app.n", "timestamp": "t", "data": {"i": i}}


def held(hub: FakeHub, emitter: EventEmitter) -> EventEmitter:
    """Hold the hub and send event 0: the flusher is then stuck inside ``send``, so what is
    emitted next piles up in the buffer until ``hub.gate.set()``."""
    hub.gate = threading.Event()
    emitter.emit(n(0), urgent=True)
    hub.until(lambda: len(hub.batches) == 1)
    return emitter


def eventually(predicate: Callable[[], bool]) -> None:
    """Wait until ``predicate`` holds (what it looks at notifies nobody)."""
    deadline = time.monotonic() + WAIT
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def numbers(events: list[dict[str, Any]]) -> list[int]:
    return [e["data"]["i"] for e in events]


def send_one(hub: FakeHub, emitter: EventEmitter[Any], i: int = -1) -> None:
    """Send one event and wait until it is out (with ``hub.hold()``, it stays in flight)."""
    sent = len(hub.batches)
    emitter.emit(n(i))
    hub.until(lambda: len(hub.batches) == sent + 1)


def test_an_event_after_a_quiet_spell_is_sent_at_once(hub, make):
    emitter = make(interval=60.0)
    send_one(hub, emitter, 0)  # not held for the 60 s interval
    assert numbers(hub.events()) == [0]


def test_events_wait_while_a_publish_is_in_flight_and_go_together_when_it_returns(hub, make):
    hub.hold()
    emitter = make(interval=60.0)
    send_one(hub, emitter)
    for i in range(100):
        emitter.emit(n(i))
    assert len(hub.batches) == 1  # publish 1 is in flight
    hub.ack(1)
    hub.until(lambda: len(hub.batches) == 2)
    assert numbers(hub.batches[1]) == list(range(100))
    hub.ack(2)
    emitter.flush(timeout=WAIT)
    assert emitter.sent_batches == 2


def test_with_room_in_flight_events_still_wait_for_a_return_not_for_a_timer(hub, make):
    hub.hold()
    emitter = make(interval=60.0, max_in_flight=4)
    send_one(hub, emitter)
    emitter.emit(n(0))
    emitter.emit(n(1))
    assert len(hub.batches) == 1  # three more may fly, but two events make no batch yet
    hub.ack(1)
    hub.until(lambda: len(hub.batches) == 2)
    assert numbers(hub.batches[1]) == [0, 1]


def test_at_a_trickle_each_event_goes_alone(hub, make):
    hub.hold()
    emitter = make(interval=60.0, max_in_flight=4)
    for i in range(5):
        send_one(hub, emitter, i)
        hub.ack(i + 1)
    emitter.flush(timeout=WAIT)
    assert [numbers(b) for b in hub.batches] == [[0], [1], [2], [3], [4]]


def test_a_return_sends_what_waited_while_other_publishes_are_still_in_flight(hub, make):
    hub.hold()
    emitter = make(interval=60.0, max_in_flight=3, max_batch=5)
    send_one(hub, emitter)
    for i in range(5):
        emitter.emit(n(i))  # a full batch takes a free slot
    hub.until(lambda: len(hub.batches) == 2)
    emitter.emit(n(5))
    emitter.emit(n(6))
    assert len(hub.batches) == 2
    hub.ack(1)  # publish 2 is still in flight
    hub.until(lambda: len(hub.batches) == 3)
    assert numbers(hub.batches[2]) == [5, 6]


def test_events_that_waited_the_interval_take_a_free_slot(hub, make):
    hub.hold()
    emitter = make(interval=0.001, max_in_flight=2)
    send_one(hub, emitter)
    emitter.emit(n(0))
    hub.until(lambda: len(hub.batches) == 2)  # publish 1 was never acknowledged
    assert numbers(hub.batches[1]) == [0]


def test_with_one_in_flight_nothing_overtakes_the_publish_in_flight(hub, make):
    hub.hold()
    emitter = make(interval=0.001)  # max_in_flight=1
    send_one(hub, emitter)
    emitter.emit(n(0), urgent=True)  # urgent, and still behind publish 1
    emitter.emit(n(1))
    assert len(hub.batches) == 1
    hub.ack(1)
    hub.until(lambda: len(hub.batches) == 2)
    assert numbers(hub.batches[1]) == [0, 1]
    hub.ack(2)
    emitter.flush(timeout=WAIT)
    assert hub.max_outstanding == 1


def test_flush_sends_what_waits_in_a_free_slot_at_once(hub, make):
    hub.hold()
    emitter = make(interval=60.0, max_in_flight=2)
    send_one(hub, emitter)
    for i in range(100):
        emitter.emit(n(i))
    flusher = threading.Thread(target=emitter.flush, kwargs={"timeout": WAIT})
    flusher.start()
    hub.until(lambda: len(hub.batches) == 2)  # without publish 1 being acknowledged
    assert numbers(hub.batches[1]) == list(range(100))
    hub.ack(1, 2)
    flusher.join(WAIT)
    assert not flusher.is_alive()


def test_events_go_out_as_they_are(hub, make):
    emitter = make()
    encoded = ("app.n", "job:j1", '{"type":"app.n"', "}")
    emitter.emit(encoded)
    emitter.flush(timeout=WAIT)
    assert hub.batches == [[encoded]]


def test_many_events_go_out_in_few_sends(hub, make):
    emitter = held(hub, make(interval=0.001))
    for i in range(1, 1000):
        emitter.emit(n(i))
    hub.gate.set()
    emitter.flush(timeout=WAIT)
    assert numbers(hub.events()) == list(range(1000))
    assert len(hub.batches) == 2  # one event, then everything that piled up meanwhile


def test_order_is_kept_across_batches(hub, make):
    emitter = held(hub, make(interval=0.001, max_batch=7))
    for i in range(1, 50):
        emitter.emit(n(i))
    hub.gate.set()
    for i in range(50, 120):
        emitter.emit(n(i), urgent=i % 9 == 0)
    emitter.flush(timeout=WAIT)
    assert len(hub.batches) >= 2
    assert numbers(hub.events()) == list(range(120))


def test_an_urgent_event_takes_a_free_slot_with_what_waited_before_it(hub, make):
    hub.hold()
    emitter = make(interval=60.0, max_in_flight=2)
    send_one(hub, emitter)
    emitter.emit(n(0))
    assert len(hub.batches) == 1
    emitter.emit(n(1), urgent=True)
    hub.until(lambda: len(hub.batches) == 2)  # publish 1 is still in flight
    assert numbers(hub.batches[1]) == [0, 1]  # what was waiting goes with it, in order


def test_a_full_batch_takes_a_free_slot(hub, make):
    hub.hold()
    emitter = make(interval=60.0, max_batch=5, max_in_flight=2)
    send_one(hub, emitter)
    for i in range(5):
        emitter.emit(n(i))
    hub.until(lambda: len(hub.batches) == 2)
    assert numbers(hub.batches[1]) == [0, 1, 2, 3, 4]


def test_flush_returns_after_the_publishes_are_done(hub, make):
    hub.hold()
    emitter = make(interval=60.0)
    send_one(hub, emitter, 0)
    emitter.emit(n(1))
    flusher = threading.Thread(target=emitter.flush, kwargs={"timeout": WAIT})
    flusher.start()
    hub.ack(1)
    # flush waits on the publish that carried the last event (the acknowledging thread
    # waits ACK_PATIENCE at a time, longer than WAIT)
    hub.until(lambda: any(h == [2] and 0 < t <= WAIT for h, t in hub.waits))
    assert flusher.is_alive()  # publish 2 is not done
    hub.ack(2)
    flusher.join(WAIT)
    assert not flusher.is_alive()
    assert numbers(hub.events()) == [0, 1]


def test_flush_with_nothing_emitted_returns_at_once(hub, make):
    emitter = make()
    emitter.flush(timeout=WAIT)
    assert hub.batches == []
    assert hub.waits == []


def test_flush_times_out_when_the_hub_does_not_take_the_events(hub, make):
    emitter = held(hub, make(interval=0.001))
    emitter.emit(n(1))
    with pytest.raises(TimeoutError):
        emitter.flush(timeout=0.05)
    hub.gate.set()
    emitter.flush(timeout=WAIT)
    assert numbers(hub.events()) == [0, 1]


def test_in_flight_publishes_are_bounded(hub, make):
    emitter = make(interval=0.001, max_in_flight=2)
    for i in range(3):
        emitter.emit(n(i), urgent=True)
        hub.until(lambda i=i: len(hub.batches) == i + 1)
    # The third send had to wait for the oldest publish first.
    assert ([1], 30.0) in hub.waits
    emitter.flush(timeout=WAIT)


def test_wait_for_room_returns_at_once_while_there_is_room(hub, make):
    hub.hold()
    emitter = make(interval=60.0, max_batch=4, max_buffer=4)
    send_one(hub, emitter)
    for i in range(3):
        emitter.emit(n(i))
        emitter.wait_for_room()  # at most three waiting of four: it does not hurry the hub
    assert len(hub.batches) == 1
    hub.release()
    emitter.flush(timeout=WAIT)
    assert numbers(hub.events()) == [-1, 0, 1, 2]


def test_a_failing_send_fails_every_later_emit_and_flush(hub, make, caplog):
    caplog.set_level(logging.ERROR, logger="control_plane.core.emitter")
    emitter = make(interval=60.0)
    hub.fail_next = True
    emitter.emit(n(0), urgent=True)
    with pytest.raises(PublishError, match="ConnectionError: hub is gone"):
        emitter.flush(timeout=WAIT)  # does not hang on the lost batch, nor hide it
    with pytest.raises(PublishError):
        emitter.emit(n(1), urgent=True)
    with pytest.raises(PublishError):
        emitter.flush(timeout=WAIT)
    assert hub.events() == [] and emitter.sent_batches == 0
    assert any("can no longer be published" in r.getMessage() for r in caplog.records)


def test_a_publish_the_hub_refused_fails_the_emitter_with_the_hubs_error(hub, make):
    hub.hold()
    emitter = make(interval=0.001, max_in_flight=1)
    send_one(hub, emitter, 0)
    emitter.emit(n(1), urgent=True)  # waits for publish 1, which fails
    hub.refuse = EventLogError("the event log /x could not be written: database or disk is full")
    hub.ack(1)
    eventually(lambda: emitter.failure is not None)
    assert isinstance(emitter.failure, EventLogError)
    for call in (lambda: emitter.emit(n(2)), emitter.flush, emitter.wait_for_room):
        with pytest.raises(EventLogError, match="disk is full"):
            call()
    assert numbers(hub.events()) == [0]  # nothing was sent after the refused publish


def test_a_publish_not_acknowledged_yet_stays_in_flight_until_it_is(hub, make):
    emitter = make(interval=0.001, max_in_flight=1)
    hub.unacknowledged = 3  # a hub that restarts: the call is retried by Ray meanwhile
    emitter.emit(n(0), urgent=True)
    hub.until(lambda: len(hub.batches) == 1)
    emitter.emit(n(1), urgent=True)
    hub.until(lambda: len(hub.batches) == 2)
    assert [h for h, _ in hub.waits[:4]] == [[1]] * 4  # the same publish, until it was done
    emitter.flush(timeout=WAIT)
    assert emitter.failure is None and numbers(hub.events()) == [0, 1]


def test_close_sends_what_is_left_and_stops_the_thread(hub, make):
    emitter = make(interval=60.0)
    emitter.emit(n(0))
    emitter.emit(n(1))
    emitter.close(timeout=WAIT)
    assert numbers(hub.events()) == [0, 1]
    assert not emitter._thread.is_alive()


def test_emit_after_close_raises(hub, make):
    emitter = make()
    emitter.close(timeout=WAIT)
    with pytest.raises(RuntimeError, match="closed"):
        emitter.emit(n(0))


def test_close_twice_is_harmless(hub, make):
    emitter = make()
    emitter.emit(n(0))
    emitter.close(timeout=WAIT)
    emitter.close(timeout=WAIT)
    assert numbers(hub.events()) == [0]


def test_many_threads_emit_without_loss_and_keep_their_own_order(hub, make):
    emitter = make(interval=0.001, max_batch=64)
    threads_count, per_thread = 8, 500
    barrier = threading.Barrier(threads_count)

    def worker(t: int) -> None:
        barrier.wait(WAIT)
        for i in range(per_thread):
            emitter.emit({"type": "app.n", "timestamp": "t", "data": {"t": t, "i": i}}, i % 97 == 0)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
        assert not thread.is_alive()
    emitter.flush(timeout=WAIT)

    events = hub.events()
    assert len(events) == threads_count * per_thread
    for t in range(threads_count):
        mine = [e["data"]["i"] for e in events if e["data"]["t"] == t]
        assert mine == list(range(per_thread))
    assert emitter.sent_batches < len(events)  # batched, not one send per event


def test_a_batch_never_exceeds_max_batch(hub, make):
    emitter = held(hub, make(interval=0.001, max_batch=10))
    for i in range(1, 95):
        emitter.emit(n(i))
    hub.gate.set()
    emitter.flush(timeout=WAIT)
    assert max(len(b) for b in hub.batches) <= 10
    assert numbers(hub.events()) == list(range(95))


def test_wait_for_room_blocks_while_the_buffer_is_full_and_goes_on_once_the_hub_takes_events(
    hub, make
):
    emitter = held(hub, make(interval=0.001, max_batch=2, max_buffer=4))
    for i in range(1, 5):
        emitter.emit(n(i))  # fills the buffer
    blocked = threading.Event()
    passed = threading.Event()

    def one_more() -> None:
        blocked.set()
        emitter.wait_for_room()
        emitter.emit(n(5))
        passed.set()

    thread = threading.Thread(target=one_more)
    thread.start()
    assert blocked.wait(WAIT)
    assert not passed.wait(0.05)  # held: the buffer is full
    hub.gate.set()
    assert passed.wait(WAIT)
    thread.join(WAIT)
    emitter.flush(timeout=WAIT)
    assert numbers(hub.events()) == list(range(6))
