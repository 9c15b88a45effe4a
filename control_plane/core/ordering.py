"""Numbered batches from many publishers, put back in each publisher's order. No Ray here.

A job keeps several publishes to the hub in flight (one at a time would make it wait a
round trip per batch), but Ray does not promise that an async actor runs two calls from one
caller in the order they were sent. So a publisher numbers its batches 0, 1, 2, ... and the
hub appends a batch only after the one before it; a batch that comes early waits. A batch
that never comes (its publisher died with it in flight) is given up after ``gap_wait``
seconds: what waited behind it is appended, in order, by :meth:`BatchOrder.overdue`.

A batch whose number was appended already is a duplicate (:meth:`BatchOrder.duplicate`):
its publish was sent again after the hub restarted (Ray retries the calls in flight on the
restarted actor, and a call whose batch was written before the crash comes back too). A
restarted hub restores each publisher's next number from its store
(:meth:`~BatchOrder.restore`), so the batch is appended once. Only a number that was given
up on (and still may come) is appended late rather than dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


MAX_SKIPPED = 1024  # numbers given up on that a publisher keeps, for a late arrival


@dataclass
class _Publisher(Generic[T]):
    expected: int = 0
    seen: float = 0.0
    waiting: dict[int, tuple[T, float]] = field(default_factory=dict)
    skipped: set[int] = field(default_factory=set)  # given up on: may still come, once


class BatchOrder(Generic[T]):
    def __init__(self, gap_wait: float = 1.0, forget_after: float = 600.0) -> None:
        self.gap_wait = gap_wait
        self.forget_after = forget_after
        self._publishers: dict[str, _Publisher[T]] = {}

    def __len__(self) -> int:
        """Batches waiting for an earlier one."""
        return sum(len(p.waiting) for p in self._publishers.values())

    def expected(self, publisher: str) -> int:
        """The number of the next batch ``publisher`` is to append (0 when unknown)."""
        state = self._publishers.get(publisher)
        return 0 if state is None else state.expected

    def restore(self, publisher: str, expected: int, now: float) -> None:
        """A restarted hub: ``publisher``'s batches before ``expected`` were appended."""
        self._publishers[publisher] = _Publisher(expected, now)

    def duplicate(self, publisher: str, number: int) -> bool:
        """Whether batch ``number`` of ``publisher`` was appended already."""
        state = self._publishers.get(publisher)
        return state is not None and number < state.expected and number not in state.skipped

    def rewind(self, publisher: str, number: int) -> None:
        """Batch ``number`` and those after it that :meth:`admit` released were not appended
        after all (the log could not be written): expect ``number`` again."""
        state = self._publishers.get(publisher)
        if state is not None:
            state.expected = min(state.expected, number)

    def admit(self, publisher: str, number: int, batch: T, now: float) -> list[T]:
        """The batches that may be appended now, in order: this one and those it freed, or
        none while an earlier batch of its publisher is missing. Ask :meth:`duplicate`
        first: a number below the expected one is taken as one that was given up on."""
        state = self._publishers.get(publisher)
        if state is None:
            state = self._publishers[publisher] = _Publisher()
        state.seen = now
        if number < state.expected:
            state.skipped.discard(number)
            return [batch]  # its gap was given up on already: late beats lost
        if number > state.expected:
            state.waiting[number] = (batch, now)
            return []
        ready = [batch]
        state.expected += 1
        while state.expected in state.waiting:
            ready.append(state.waiting.pop(state.expected)[0])
            state.expected += 1
        return ready

    def overdue(self, now: float) -> list[T]:
        """Batches that waited ``gap_wait`` for a missing one: given up waiting, in order."""
        ready: list[T] = []
        for name, state in list(self._publishers.items()):
            if not state.waiting:
                if now - state.seen > self.forget_after:
                    del self._publishers[name]
                continue
            if now - min(arrived for _, arrived in state.waiting.values()) < self.gap_wait:
                continue
            for number in sorted(state.waiting):
                ready.append(state.waiting.pop(number)[0])
                if number - state.expected <= MAX_SKIPPED:
                    state.skipped.update(range(state.expected, number))
                state.expected = number + 1
        return ready
