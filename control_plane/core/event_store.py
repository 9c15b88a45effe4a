"""Where the hub's log lives beyond its process: the storage interface. No Ray here.

The hub (``actors/hub.py``) writes every batch it appends to an :class:`EventStore` before
it acknowledges the publish, and a restarted hub rebuilds its :class:`~control_plane.core.
hub_log.EventLog` from :meth:`EventStore.load`: the same epoch, ``seq`` going on from the
last one written, and per publisher the number of the next batch it expects, so that a
batch its publisher sends again after the crash is appended once.

A store keeps batches, not events: one row per publish is what makes a transaction per
batch cheap (``sqlite_store.py`` measured it), and a batch's events are numbered
``first_seq, first_seq + 1, ...`` in order, so each event's ``seq`` is kept all the same.

:class:`NullStore` keeps nothing: a hub without a state directory, and unit tests.
``sqlite_store.py`` has the embedded default; another backend implements the same five
methods.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from control_plane.core.encoding import Encoded


class StoredBatch(NamedTuple):
    """One appended batch: its events are ``first_seq`` onwards, in order, all for ``target``;
    ``at`` is when the hub appended it (``time.time()``, for retention by age)."""

    first_seq: int
    target: str
    at: float
    events: list[Encoded]

    @property
    def last_seq(self) -> int:
        return self.first_seq + len(self.events) - 1


@dataclass
class Restored:
    """What a store holds: ``epoch`` None when it is new (nothing was ever written)."""

    epoch: str | None = None
    head: int = 0  # the last seq ever written (retention never lowers it)
    batches: list[StoredBatch] = field(default_factory=list)  # oldest first, contiguous
    publishers: dict[str, int] = field(default_factory=dict)  # name -> next number expected


class EventStore(Protocol):
    """A durable home for the hub's log. Every method may raise
    :class:`~control_plane.core.errors.EventLogError`; a failed :meth:`append` wrote nothing."""

    def load(self) -> Restored:
        """Everything retained, for a hub that starts (again)."""
        ...

    def begin(self, epoch: str) -> None:
        """Record the epoch of a new log (a store that :meth:`load` found empty)."""
        ...

    def append(self, batches: list[StoredBatch], publishers: dict[str, int]) -> None:
        """Write ``batches`` and the publishers' next expected numbers in one transaction;
        return only once they would survive the hub's process dying."""
        ...

    def retain(self, oldest_seq: int, older_than: float, publishers_before: float) -> None:
        """Drop batches wholly before ``oldest_seq`` or appended before ``older_than``, and
        publishers last heard of before ``publishers_before``."""
        ...

    def close(self) -> None: ...


class NullStore:
    """Keeps nothing: a hub restarted over it begins a new epoch."""

    def load(self) -> Restored:
        return Restored()

    def begin(self, epoch: str) -> None:
        pass

    def append(self, batches: list[StoredBatch], publishers: dict[str, int]) -> None:
        pass

    def retain(self, oldest_seq: int, older_than: float, publishers_before: float) -> None:
        pass

    def close(self) -> None:
        pass
