"""The hub's two lanes: control calls never wait behind bulk publishes. No Ray here.

An async actor runs its calls on one event loop in the order they arrive. Under a load that
keeps the hub busy, four publishers with a batch of 1,000 events each in flight put about
60 ms of work ahead of anything that comes after, so a ``job.paused`` (and the listen that
would carry it to the gateway) waited behind all of it: the pause round trip was 136 ms at
p50 and 300 ms at p99 under a 50,000 events/s load (``hub.head`` alone: 75 / 217 ms).

:class:`BulkLane` makes bulk publishes take turns: a bulk call only registers when it
arrives, and is given its turn after a full pass of the event loop once the turn before it
has ended. Everything that arrived meanwhile (a lifecycle publish, a listen woken by an
append, a ``head``) runs first, so a control call waits for at most the one bulk batch
being written when it arrived. The lane changes no order that matters: bulk batches keep
their order of arrival among themselves, and a publisher's numbered batches are put in
order by ``ordering.py`` whatever lane they came by.

:func:`is_control` says which batches go by the control lane: those with a lifecycle event
(every ``job.*`` type but ``job.progress``), which are few and small.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

from control_plane.core.encoding import Encoded

BULK_TYPES = frozenset({"job.progress"})


def is_control(types: Iterable[str]) -> bool:
    """Whether a batch of events of these types goes by the control lane."""
    return any(t.startswith("job.") and t not in BULK_TYPES for t in types)


def publish_lane(hub: Any, events: Iterable[Encoded]) -> Any:
    """The method of the hub actor ``hub`` that a batch goes by: ``publish_control`` for one
    with a lifecycle event, else ``publish_encoded``."""
    return hub.publish_control if is_control(e[0] for e in events) else hub.publish_encoded


class BulkLane:
    """Bulk work one turn at a time, each turn after a pass of the loop (see the module)."""

    def __init__(self) -> None:
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._busy = False
        self.turns = 0  # turns given (tests and stats)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """Wait for this call's turn; the body should not await (it holds the lane)."""
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        self._waiting.append(ready)
        if not self._busy:
            self._busy = True
            loop.call_soon(self._next)
        try:
            await ready
        except asyncio.CancelledError:
            if ready.done() and not ready.cancelled():  # given the turn, then cancelled
                loop.call_soon(self._next)
            raise
        try:
            yield
        finally:
            loop.call_soon(self._next)  # behind what arrived during this turn

    def _next(self) -> None:
        while self._waiting:
            ready = self._waiting.popleft()
            if not ready.done():
                self.turns += 1
                ready.set_result(None)  # its caller resumes after one more pass
                return
        self._busy = False
