"""Publisher-side batching: many events per hub call, never one call per event.

A job emits from its event loop or from a worker thread; :class:`EventEmitter` buffers the
envelopes and a single flusher thread sends them every ``interval`` seconds or as soon as
``max_batch`` are waiting. One thread sends, one batch at a time by default: Ray does not
promise that an async actor runs two calls from one caller in the order they were sent
(a large batch waits for its arguments to arrive), so a second batch in flight could
overtake the first. One in flight keeps a job's events in the order it emitted them.
Lifecycle events are sent ``urgent``ly: the flusher wakes at once, so a ``job.paused``
does not wait for the batching interval. Sends are at least ``interval`` apart unless
urgent: an event after a quiet spell goes at once, and a job that emits flat out sends
one batch an interval (or one a publish, when publishes are slower).

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


class EventEmitter(Generic[T]):
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
        self._send = send
        self._wait = wait
        self._interval = interval
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._max_buffer = max(max_buffer, max_batch)
        self._buffer: list[T] = []
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._urgent = False
        self._closed = False
        # Where the flusher waits, so that emit() wakes it only when it has to.
        self._idle = False  # for a first event
        self._filling = False  # for the batching interval to run out
        self._in_flight: deque[Any] = deque()
        self._last_send = -interval  # monotonic time of the last send
        self._sent_batches = 0
        self._taken = 0  # count of events the flusher took from the buffer
        self._flushed_upto = 0  # count of events handed to send()
        self.failure: PublishError | None = None  # set once a publish failed; then raised
        self._thread = threading.Thread(target=self._run, name="event-emitter", daemon=True)
        self._thread.start()

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
        with self._cond:
            while len(self._buffer) >= self._max_buffer and not self._closed:
                self._check()
                self._urgent = True
                self._cond.notify_all()
                self._cond.wait(1.0)

    def emit(self, event: T, urgent: bool = False) -> None:
        """Queue one event; thread-safe and never blocks (see :meth:`wait_for_room`)."""
        with self._lock:
            self._check()
            if self._closed:
                raise RuntimeError("emitter is closed")
            buffer = self._buffer
            buffer.append(event)
            if urgent or len(buffer) >= self._max_batch:
                self._urgent = True
                if self._idle or self._filling:
                    self._idle = self._filling = False
                    self._cond.notify_all()
            elif self._idle:
                self._idle = False
                self._cond.notify_all()

    def flush(self, timeout: float = 10.0) -> None:
        """Block until everything emitted so far has reached the hub."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._check()
            target = self._taken + len(self._buffer)
            self._urgent = True
            self._cond.notify_all()
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
        with self._cond:
            if self.failure is None:
                self.failure = publish_failure(error)
                logger.error("events can no longer be published: %s", self.failure)
            self._buffer = []
            self._cond.notify_all()

    def close(self, timeout: float = 10.0) -> None:
        """Send what is left and stop; raises like :meth:`flush` (and stops all the same)."""
        try:
            self.flush(timeout)
        finally:
            with self._cond:
                self._closed = True
                self._cond.notify_all()
            self._thread.join(timeout)

    def _run(self) -> None:
        cond = self._cond
        while True:
            with cond:
                while not self._buffer and not self._closed:
                    self._idle = True
                    cond.wait()
                self._idle = False
                if self._closed and not self._buffer:
                    return
                if self.failure is not None:
                    self._buffer = []
                    continue
                if not self._urgent:
                    # Give the batch a moment to fill, unless the last send was an interval
                    # ago; an urgent event or a full batch cuts the wait short.
                    delay = self._last_send + self._interval - time.monotonic()
                    if delay > 0:
                        self._filling = True
                        cond.wait_for(lambda: self._urgent or self._closed, delay)
                        self._filling = False
                buffer = self._buffer
                if len(buffer) <= self._max_batch:
                    batch, self._buffer = buffer, []
                else:
                    batch = buffer[: self._max_batch]
                    del buffer[: self._max_batch]
                self._taken += len(batch)
                self._urgent = bool(self._buffer)  # more waiting: no pause before the next
                cond.notify_all()
            self._publish(batch)

    def _publish(self, batch: list[T]) -> None:
        while len(self._in_flight) >= self._max_in_flight and self.failure is None:
            try:
                self._wait([self._in_flight[0]], 30.0)
            except TimeoutError:
                # Kept until acknowledged: Ray sends it again to a hub that restarts.
                logger.warning("a hub publish has not been acknowledged for 30 s; waiting")
                continue
            except Exception as e:
                self._fail(e)
            self._in_flight.popleft()
        self._last_send = time.monotonic()
        if self.failure is None:
            try:
                self._in_flight.append(self._send(batch))
                self._sent_batches += 1
            except Exception as e:
                self._fail(e)
        with self._cond:
            self._flushed_upto += len(batch)
            self._cond.notify_all()
