"""Publisher-side batching that adapts to the load: many events per hub call under load,
none held back when there is none.

A job emits from its event loop or from a worker thread; :class:`EventEmitter` buffers the
envelopes and sends them from a thread of its own. **An event goes at once when no publish
is in flight.** While one is, events accumulate, and what accumulated goes as one batch as
soon as a publish returns (the hub took the last batch: the pipe moves), so the batch size
follows the hub's round trip: one event a call at a trickle, ``max_batch`` a call flat out.
Sends used to be at least ``interval`` (5 ms) apart: at 2000 events/s an event waited
3.8-4.8 ms (p50) between ``emit`` and its send, 1.4-3.4 ms now (measured per stage on
2 shared CPUs; the rest of the way is Ray's call latency, one call to the hub and the
replica's long-poll). Flat out, batches are as before: 298 events a publish on average.

With ``max_in_flight`` above one, a further publish goes while others are in flight only
for a full batch (``max_batch`` waiting), an ``urgent`` event, a :meth:`flush`, or events
that have waited ``interval`` seconds behind the publishes in flight (a slow hub does not
hold them for a whole round trip). ``interval`` is thus the longest an event waits for a
batch to form while the hub is busy, no longer a pause between sends. Lifecycle events are
sent ``urgent``ly, so a ``job.paused`` waits for no batch to fill.

One thread at a time sends, so batches are numbered in the order of their events; with
``max_in_flight`` one (the default), one publish at a time: Ray does not promise that an
async actor runs two calls from one caller in the order they were sent (a large batch
waits for its arguments to arrive), so a second batch in flight could overtake the first.
One in flight keeps a job's events in the order it emitted them; a publisher with more in
flight numbers its batches and the hub puts them back in order (``ordering.py``). Two
threads: the flusher sends what is due without a return (an event when nothing is in
flight, an urgent one, a full batch, events that waited the interval); the other waits for
the publishes in flight, oldest first, and sends what waited for each as it returns.

The emitter does not look inside what it buffers: a job buffers events it encoded itself
(``control_plane.core.encoding``), so neither its flusher nor the hub encodes them again.

The transport is two callables, so the emitter is tested without Ray: ``send(batch)``
starts a publish and returns a handle, ``wait(handles, timeout)`` blocks until they are done.
A ``wait`` that looks at the outcome (:func:`settle_refs`) raises ``TimeoutError`` while a
publish is not done, and whatever a failed one raised: a batch stays in flight until its
publish is acknowledged (a hub that restarts gets the call again from Ray, which retries
it), and a publish that failed makes the emitter fail for good. Every later ``emit``,
``flush`` and ``wait_for_room`` raises :class:`~control_plane.core.errors.PublishError`
(:class:`~control_plane.core.errors.EventLogError` when the hub could not write its log),
so a job learns at its next event that what it emitted since was not delivered, instead of
losing it silently. :func:`wait_refs` looks at no outcome (a publish that fails is lost).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from control_plane.core.errors import PublishError

logger = logging.getLogger(__name__)

T = TypeVar("T")
Wait = Callable[[list[Any], float], None]


def wait_refs(refs: list[Any], timeout: float) -> None:
    """Wait for Ray publishes without ``ray.get`` (which warns inside async actors)."""
    import ray

    ray.wait(refs, num_returns=len(refs), timeout=timeout, fetch_local=False)


def settle_refs(refs: list[Any], timeout: float) -> None:
    """Wait for Ray publishes; raise what a failed one raised, ``TimeoutError`` when they
    are not all done in time. (``ObjectRef.future()`` is a thread's wait without ``ray.get``.)"""
    deadline = time.monotonic() + timeout
    for ref in refs:
        ref.future().result(max(0.0, deadline - time.monotonic()))


def publish_failure(error: BaseException) -> PublishError:
    """The error an emitter raises after ``error`` failed a publish (Ray's wrapper undone)."""
    cause = getattr(error, "cause", None) or error
    if isinstance(cause, PublishError):
        return type(cause)(cause.message)
    return PublishError(f"a publish to the event hub failed: {type(cause).__name__}: {cause}")


ACK_PATIENCE = 30.0  # seconds between two warnings about a publish not acknowledged yet


class EventEmitter(Generic[T]):
    """Buffers events and sends them in batches that adapt to the hub (see the module)."""

    def __init__(
        self,
        send: Callable[[list[T]], Any],
        wait: Wait,
        *,
        interval: float = 0.005,
        max_batch: int = 1000,
        max_in_flight: int = 1,
        max_buffer: int = 20_000,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self._send = send
        self._wait = wait
        self._interval = interval
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._max_buffer = max(max_buffer, max_batch)
        self._buffer: list[T] = []
        # When the buffer last went from empty to not (monotonic): no later than its oldest
        # event's emit, so events never wait longer than the interval for a free slot.
        self._since = 0.0
        self._lock = threading.Lock()
        # Three waits on one lock, so that each wakes only who must act: flush() and
        # wait_for_room() on _cond, the flusher on _wake, the acknowledging thread on _acks.
        self._cond = threading.Condition(self._lock)
        self._wake = threading.Condition(self._lock)
        self._acks = threading.Condition(self._lock)
        self._urgent = False  # an urgent event (or a flush) waits in the buffer
        self._returned = False  # a publish came back since the last batch was taken
        self._closed = False
        self._sleeping = False  # the flusher waits on _wake: emit() wakes it when it must
        self._sending = False  # a thread took a batch and sends it; no other may send
        self._in_flight: deque[Any] = deque()  # handles of publishes not acknowledged, oldest first
        self._sent_batches = 0
        self._taken = 0  # count of events taken from the buffer
        self._flushed_upto = 0  # count of events handed to send()
        self.failure: PublishError | None = None  # set once a publish failed; then raised
        self._thread = threading.Thread(target=self._run, name="event-emitter", daemon=True)
        self._acker = threading.Thread(
            target=self._acknowledge, name="event-emitter-acks", daemon=True
        )
        self._thread.start()
        self._acker.start()

    @property
    def sent_batches(self) -> int:
        return self._sent_batches

    def wait_for_room(self) -> None:
        """Block while ``max_buffer`` events wait for the hub. Producers call this before
        they emit (outside their own locks): a job that outruns the hub is slowed, and its
        memory does not grow."""
        self._check()
        if len(self._buffer) < self._max_buffer:
            return  # the common case, without the lock: len() of a list is atomic
        with self._lock:
            while len(self._buffer) >= self._max_buffer and not self._closed:
                self._check()
                self._urgent = True
                self._wake.notify()
                self._cond.wait(1.0)

    def emit(self, event: T, urgent: bool = False) -> None:
        """Queue one event; thread-safe and never blocks (see :meth:`wait_for_room`)."""
        with self._lock:
            self._check()
            if self._closed:
                raise RuntimeError("emitter is closed")
            buffer = self._buffer
            first = not buffer
            if first:
                self._since = time.monotonic()
            buffer.append(event)
            if urgent:
                self._urgent = True
            # The flusher sleeps until the interval runs out or one of these makes it look
            # again (nothing in flight: this one goes at once). With no slot free, or a
            # send under way, the thread that frees one or sends looks for itself.
            if (
                self._sleeping
                and (first or urgent or len(buffer) >= self._max_batch)
                and not self._sending
                and len(self._in_flight) < self._max_in_flight
            ):
                self._sleeping = False
                self._wake.notify()

    def flush(self, timeout: float = 10.0) -> None:
        """Block until everything emitted so far has reached the hub."""
        deadline = time.monotonic() + timeout
        with self._lock:
            self._check()
            target = self._taken + len(self._buffer)
            if self._buffer:
                self._urgent = True
                self._wake.notify()
            while self._flushed_upto < target:
                self._check()
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("events were not handed to the hub in time")
                self._cond.wait(left)
            self._check()
            pending = list(self._in_flight)
        if pending:
            try:
                self._wait(pending, max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                raise
            except Exception as e:
                self._fail(e)
                self._check()

    def _check(self) -> None:
        if self.failure is not None:
            raise self.failure

    def _fail(self, error: BaseException) -> None:
        """A publish failed: the emitter fails from now on; what is buffered is dropped."""
        with self._lock:
            if self.failure is None:
                self.failure = publish_failure(error)
                logger.error("events can no longer be published: %s", self.failure)
            self._buffer = []
            self._notify_all()

    def _notify_all(self) -> None:
        self._cond.notify_all()
        self._wake.notify_all()
        self._acks.notify_all()

    def close(self, timeout: float = 10.0) -> None:
        """Send what is left and stop; raises like :meth:`flush` (and stops all the same)."""
        try:
            self.flush(timeout)
        finally:
            with self._lock:
                self._closed = True
                self._notify_all()
            self._thread.join(timeout)
            self._acker.join(timeout)

    # --- the flusher -----------------------------------------------------------------------

    def _due(self) -> float | None:
        """0 when a batch is to go now; else how long the flusher may sleep (None: until it
        is woken). The lock is held."""
        buffer = self._buffer
        if not buffer or self._sending:
            return None  # the sender looks again once it has sent
        flying = len(self._in_flight)
        if flying >= self._max_in_flight:
            return None  # a publish that returns sends
        if (
            not flying
            or self._returned
            or self._urgent
            or self._closed
            or len(buffer) >= self._max_batch
        ):
            return 0.0
        # Publishes are in flight and one more may go: the events wait for one to return,
        # but not longer than the interval.
        return max(0.0, self._since + self._interval - time.monotonic())

    def _take(self) -> list[T] | None:
        """The next batch if one is due, and the right to send it; the lock is held. One
        thread sends at a time, so batches go (and are numbered) in the order they were
        taken."""
        due = self._due()
        if due is None or due > 0:
            return None
        buffer = self._buffer
        if len(buffer) <= self._max_batch:
            batch, self._buffer = buffer, []
        else:
            batch = buffer[: self._max_batch]
            del buffer[: self._max_batch]
        self._taken += len(batch)
        self._urgent = self._urgent and bool(self._buffer)
        self._returned = False
        self._sending = True
        self._cond.notify_all()  # room in the buffer
        return batch

    def _run(self) -> None:
        """The flusher: sends what is due when no publish's return will (an event when
        nothing is in flight, an urgent one, a full batch, events that waited the interval)."""
        while True:
            with self._lock:
                while True:
                    if self.failure is not None:
                        self._buffer = []
                    if self._closed and not self._buffer:
                        return
                    batch = self._take()
                    if batch is not None:
                        break
                    self._sleeping = True
                    self._wake.wait(self._due())
                    self._sleeping = False
            self._publish(batch)

    def _publish(self, batch: list[T] | None) -> None:
        """Send ``batch`` and whatever is due after it (the caller took the right to send)."""
        while batch is not None:
            handle: Any = None
            sent = False
            if self.failure is None:
                try:
                    handle = self._send(batch)
                    sent = True
                except Exception as e:
                    self._fail(e)
            with self._lock:
                self._sending = False
                if sent:
                    self._sent_batches += 1
                    if self.failure is None:
                        self._in_flight.append(handle)
                        self._acks.notify()
                self._flushed_upto += len(batch)
                self._cond.notify_all()
                batch = self._take()
                if batch is None and self._buffer and self._sleeping:
                    self._wake.notify()  # its timer (the interval) may have to start

    # --- acknowledgements ------------------------------------------------------------------

    def _acknowledge(self) -> None:
        """Wait for the publishes in flight, oldest first, and send what waited for each to
        return (from this thread: no hand-over to the flusher, one thread switch less a
        batch). A publish stays in flight until it is acknowledged (Ray sends it again to a
        hub that restarts); one that failed fails the emitter."""
        while True:
            with self._lock:
                if self.failure is not None:
                    self._in_flight.clear()  # their outcome no longer matters
                while not self._in_flight and not self._closed:
                    self._acks.wait()
                if not self._in_flight:
                    return  # closed
                oldest = self._in_flight[0]
            try:
                self._wait([oldest], ACK_PATIENCE)
            except TimeoutError:
                logger.warning("a hub publish has not been acknowledged for 30 s; waiting")
                continue
            except Exception as e:
                self._fail(e)
            with self._lock:
                if self.failure is not None:
                    self._in_flight.clear()  # their outcome no longer matters
                elif self._in_flight:
                    self._in_flight.popleft()
                self._returned = True
                batch = self._take()  # what waited for this return goes now, from here
            self._publish(batch)
