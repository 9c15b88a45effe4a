"""The EventHub actor: a thin Ray shell around :class:`~control_plane.hub.EventLog`.

Publishers call :meth:`EventHub.publish` with a batch; each gateway replica (and the
controller) keeps exactly one :meth:`EventHub.listen` call in flight with its cursor and gets
everything after it, so the hub does one call per batch per reader, never one per event.
"""

from __future__ import annotations

from typing import Any

import ray

from control_plane import runtime
from control_plane.hub import (
    TARGET_ALL,
    TARGET_CHANNEL,
    Encoded,
    EventLog,
    ListenResult,
    LogEntry,
    client_target,
)
from control_plane.routing import matches

DEFAULT_HISTORY = 100_000


class EventHub:
    def __init__(self, capacity: int = DEFAULT_HISTORY) -> None:
        self._log = EventLog(capacity)

    async def publish(self, events: list[dict[str, Any]], target: str = TARGET_CHANNEL) -> int:
        """Append a batch of envelopes; return the seq of the last one."""
        self._log.append(events, target)
        return self._log.head

    async def publish_encoded(self, events: list[Encoded], target: str = TARGET_CHANNEL) -> int:
        """Append a batch that its publisher encoded with :func:`encode_event`."""
        self._log.append_encoded(events, target)
        return self._log.head

    async def listen(
        self, epoch: str | None, after_seq: int, timeout: float = 30.0, limit: int = 10_000
    ) -> ListenResult:
        return await self._log.listen(epoch, after_seq, timeout, limit)

    async def replay(
        self,
        after_seq: int,
        channels: list[str],
        epoch: str | None = None,
        client_id: str | None = None,
    ) -> dict[str, Any]:
        """Retained entries after ``after_seq`` for a subscribe with ``since``: those on
        ``channels``, broadcasts, and those sent to ``client_id``.

        ``recovered`` is False when the history no longer reaches back to ``after_seq`` or
        the caller's epoch is not this log's; a cursor from another epoch means nothing
        here, so the replay then starts from the oldest retained entry.
        """
        other_epoch = epoch is not None and epoch != self._log.epoch
        if other_epoch:
            after_seq = 0
        recovered = self._log.covers(after_seq) and not other_epoch
        mine = client_target(client_id) if client_id else None
        entries: list[LogEntry] = [
            e
            for e in self._log.read(after_seq)
            if (e.target == TARGET_CHANNEL and matches(channels, e.channel, e.type))
            or e.target == TARGET_ALL
            or e.target == mine
        ]
        return {
            "epoch": self._log.epoch,
            "entries": entries,
            "head": self._log.head,
            "oldest": self._log.oldest,
            "recovered": recovered,
        }

    async def stats(self) -> dict[str, Any]:
        return self._log.stats()

    async def head(self) -> tuple[str, int]:
        return self._log.epoch, self._log.head


EventHubActor: Any = ray.remote(EventHub)


def ensure_hub(capacity: int = DEFAULT_HISTORY) -> Any:
    """Create the named, detached hub unless it exists; return its handle."""
    handle = EventHubActor.options(**runtime.singleton_options(runtime.HUB_NAME)).remote(capacity)
    ray.get(handle.head.remote())
    return handle
