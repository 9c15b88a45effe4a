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
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")
Wait = Callable[[list[Any], float], None]


def wait_refs(refs: list[Any], timeout: float) -> None:
    """Wait for Ray publishes without ``ray.get`` (which warns inside async actors)."""
    import ray

    ray.wait(refs, num_returns=len(refs), timeout=timeout, fetch_local=False)


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
        self._thread = threading.Thread(target=self._run, name="event-emitter", daemon=True)
        self._thread.start()

    @property
    def sent_batches(self) -> int:
        return self._sent_batches

    def wait_for_room(self) -> None:
        """Block while ``max_buffer`` events wait for the hub. Producers call this before
        they emit (outside their own locks): a job that outruns the hub is slowed, and its
        memory does not grow."""
        if len(self._buffer) < self._max_buffer:
            return  # the common case, without the lock: len() of a list is atomic
        with self._cond:
            while len(self._buffer) >= self._max_buffer and not self._closed:
                self._urgent = True
                self._cond.notify_all()
                self._cond.wait(1.0)

    def emit(self, event: T, urgent: bool = False) -> None:
        """Queue one event; thread-safe and never blocks (see :meth:`wait_for_room`)."""
        with self._lock:
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
            target = self._taken + len(self._buffer)
            self._urgent = True
            self._cond.notify_all()
            while self._flushed_upto < target:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("events were not handed to the hub in time")
                self._cond.wait(left)
            pending = list(self._in_flight)
        if pending:
            self._wait(pending, max(0.0, deadline - time.monotonic()))

    def close(self, timeout: float = 10.0) -> None:
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
        while len(self._in_flight) >= self._max_in_flight:
            oldest = self._in_flight.popleft()
            try:
                self._wait([oldest], 30.0)
            except Exception:
                logger.warning("a hub publish did not complete", exc_info=True)
        self._last_send = time.monotonic()
        try:
            self._in_flight.append(self._send(batch))
            self._sent_batches += 1
        except Exception:
            logger.exception("dropping %d events: the hub could not be reached", len(batch))
        with self._cond:
            self._flushed_upto += len(batch)
            self._cond.notify_all()
