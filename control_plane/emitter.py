"""Publisher-side batching: many events per hub call, never one call per event.

A job emits from its event loop or from a worker thread; :class:`EventEmitter` buffers the
envelopes and a single flusher thread sends them every ``interval`` seconds or as soon as
``max_batch`` are waiting. One thread sends, one batch at a time by default: Ray does not
promise that an async actor runs two calls from one caller in the order they were sent
(a large batch waits for its arguments to arrive), so a second batch in flight could
overtake the first. One in flight keeps a job's events in the order it emitted them.
Lifecycle events are sent ``urgent``ly: the flusher wakes at once, so a ``job.paused``
does not wait for the batching interval.

The transport is two callables, so the emitter is tested without Ray: ``send(batch)``
starts a publish and returns a handle, ``wait(handles, timeout)`` blocks until they are done.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

Send = Callable[[list[dict[str, Any]]], Any]
Wait = Callable[[list[Any], float], None]


def wait_refs(refs: list[Any], timeout: float) -> None:
    """Wait for Ray publishes without ``ray.get`` (which warns inside async actors)."""
    import ray

    ray.wait(refs, num_returns=len(refs), timeout=timeout, fetch_local=False)


class EventEmitter:
    def __init__(
        self,
        send: Send,
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
        self._buffer: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self._urgent = False
        self._closed = False
        self._in_flight: deque[Any] = deque()
        self._sent_batches = 0
        self._flushed_upto = 0  # count of events handed to send()
        self._emitted = 0
        self._thread = threading.Thread(target=self._run, name="event-emitter", daemon=True)
        self._thread.start()

    @property
    def sent_batches(self) -> int:
        return self._sent_batches

    def wait_for_room(self) -> None:
        """Block while ``max_buffer`` events wait for the hub. Producers call this before
        they emit (outside their own locks): a job that outruns the hub is slowed, and its
        memory does not grow."""
        with self._cond:
            while len(self._buffer) >= self._max_buffer and not self._closed:
                self._urgent = True
                self._cond.notify_all()
                self._cond.wait(1.0)

    def emit(self, event: dict[str, Any], urgent: bool = False) -> None:
        """Queue one envelope; thread-safe and never blocks (see :meth:`wait_for_room`)."""
        with self._cond:
            if self._closed:
                raise RuntimeError("emitter is closed")
            self._buffer.append(event)
            self._emitted += 1
            if urgent or len(self._buffer) >= self._max_batch:
                self._urgent = True
                self._cond.notify()
            elif len(self._buffer) == 1:
                self._cond.notify()

    def flush(self, timeout: float = 10.0) -> None:
        """Block until everything emitted so far has reached the hub."""
        deadline = time.monotonic() + timeout
        with self._cond:
            target = self._emitted
            self._urgent = True
            self._cond.notify()
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
                self._cond.notify()
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._buffer and not self._closed:
                    self._cond.wait()
                if self._closed and not self._buffer:
                    return
                if not self._urgent:
                    # Give the batch a moment to fill; an urgent event cuts the wait short.
                    self._cond.wait_for(lambda: self._urgent or self._closed, self._interval)
                batch = self._buffer[: self._max_batch]
                del self._buffer[: self._max_batch]
                self._urgent = bool(self._buffer)  # more waiting: no pause before the next
                self._cond.notify_all()
            self._publish(batch)

    def _publish(self, batch: list[dict[str, Any]]) -> None:
        while len(self._in_flight) >= self._max_in_flight:
            oldest = self._in_flight.popleft()
            try:
                self._wait([oldest], 30.0)
            except Exception:
                logger.warning("a hub publish did not complete", exc_info=True)
        try:
            self._in_flight.append(self._send(batch))
            self._sent_batches += 1
        except Exception:
            logger.exception("dropping %d events: the hub could not be reached", len(batch))
        with self._cond:
            self._flushed_upto += len(batch)
            self._cond.notify_all()
