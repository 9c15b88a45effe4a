"""The sharded hub: N EventHub actors, an event placed by its channel (``core/shards.py``).

With one shard (the default) the hub is today's :class:`~control_plane.actors.hub.EventHub`
under ``control_plane.hub``, and nothing here changes it. With N > 1, shard 0 keeps that
name and shard k > 0 is ``control_plane.hub.<k>``; each is a :class:`ShardHub`: an EventHub
with its own SQLite file (``events.sqlite3`` for shard 0, ``events.<k>.sqlite3`` else), its
own epoch and ``seq``, that splices ``"shard": k`` into each frame it appends. Any process
finds the shards through shard 0 (:func:`handles`).
"""

from __future__ import annotations

import itertools
from typing import Any

import ray

from control_plane.actors import hub as hub_actor
from control_plane.actors import runtime
from control_plane.actors import state_dir as state_dirs
from control_plane.core.emitter import wait_refs
from control_plane.core.encoding import Encoded, encode_event
from control_plane.core.errors import ControlPlaneError
from control_plane.core.hub_log import TARGET_CHANNEL
from control_plane.core.lanes import publish_lane
from control_plane.core.limits import DEFAULT_MAX_EVENT_BYTES
from control_plane.core.shards import check_shards, shard_of, shard_tag
from control_plane.core.sqlite_store import SQLiteEventStore

ENV_VAR = "CONTROL_PLANE_HUB_SHARDS"


def shard_name(shard: int) -> str:
    return runtime.HUB_NAME if shard == 0 else f"{runtime.HUB_NAME}.{shard}"


def events_file(shard: int) -> str:
    if shard == 0:
        return state_dirs.EVENTS_FILE
    stem, _, suffix = state_dirs.EVENTS_FILE.rpartition(".")
    return f"{stem}.{shard}.{suffix}"


class ShardHub(hub_actor.EventHub):
    """Shard ``shard`` of ``shards``: an EventHub whose frames say which shard they are of."""

    def __init__(
        self,
        shard: int,
        shards: int,
        capacity: int = hub_actor.DEFAULT_HISTORY,
        state_dir: str | None = None,
        history_age: float | None = None,
        history_bytes: int | None = hub_actor.DEFAULT_HISTORY_BYTES,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    ) -> None:
        self._shard, self._shards = shard, shards
        self._tag = shard_tag(shard)
        store = SQLiteEventStore(state_dirs.resolve(state_dir) / events_file(shard))
        super().__init__(
            capacity,
            state_dir,
            history_age,
            store,
            history_bytes=history_bytes,
            max_event_bytes=max_event_bytes,
        )

    def _prepare(self, events: list[Encoded]) -> list[Encoded]:
        tag = self._tag
        return [(kind, channel, head + tag, tail) for kind, channel, head, tail in events]

    async def shard_info(self) -> tuple[int, int]:
        """(this shard's index, how many shards the hub has)."""
        return self._shard, self._shards


ShardHubActor: Any = ray.remote(concurrency_groups={"bulk": hub_actor.BULK_CALLS})(ShardHub)  # type: ignore[call-overload]


def ensure_hubs(
    shards: int = 1,
    capacity: int = hub_actor.DEFAULT_HISTORY,
    state_dir: str | None = None,
    history_age: float | None = None,
    history_bytes: int | None = hub_actor.DEFAULT_HISTORY_BYTES,
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
) -> list[Any]:
    """Make sure the hub's ``shards`` actors run (one: :func:`~control_plane.actors.hub.
    ensure_hub`); return their handles. A hub already running with another count is an
    error: its events are placed by that count."""
    check_shards(shards)
    if shards == 1:
        handle = hub_actor.ensure_hub(
            capacity,
            state_dir,
            history_age,
            history_bytes=history_bytes,
            max_event_bytes=max_event_bytes,
        )
        running = count(handle)
        if running != 1:
            raise ControlPlaneError(f"the event hub runs with {running} shards, not 1")
        return [handle]

    def make(k: int) -> Any:
        return ShardHubActor.options(**runtime.singleton_options(shard_name(k))).remote(
            k,
            shards,
            capacity,
            state_dir,
            history_age,
            history_bytes=history_bytes,
            max_event_bytes=max_event_bytes,
        )

    first = make(0)  # an existing hub is checked before any other shard is made
    running = count(first)
    if running != shards:
        raise ControlPlaneError(f"the event hub runs with {running} shards, not {shards}")
    made = [first, *(make(k) for k in range(1, shards))]
    ray.get([h.head.remote() for h in made])
    return made


def count(shard0: Any) -> int:
    """How many shards the hub whose shard 0 is ``shard0`` has."""
    _, shards = ray.get(shard0.shard_info.remote())
    return int(shards)


def handles() -> list[Any]:
    """Every shard's handle, shard 0 first (:class:`HubUnavailableError` if none runs)."""
    first = runtime.hub()
    shards = count(first)
    found = [first]
    for k in range(1, shards):
        handle = runtime.get_actor(shard_name(k))
        if handle is None:
            raise ControlPlaneError(f"hub shard {k} of {shards} is not running")
        found.append(handle)
    return found


def hub_for(channel: str, hubs: list[Any] | None = None) -> Any:
    """The shard that holds ``channel``'s events."""
    hubs = hubs if hubs is not None else handles()
    return hubs[shard_of(channel, len(hubs))]


def names(shards: int) -> list[str]:
    return [shard_name(k) for k in range(shards)]


class ShardedSend:
    """An emitter's ``send`` to every shard: a batch is split by shard, each part numbered
    in a sequence of its own (publisher ``<publisher>`` on one shard, ``<publisher>-<k>``
    on shard k of several), so that each shard appends a publisher's parts in order.
    Returns the publishes' refs (:func:`wait_shard_refs` waits for them)."""

    def __init__(self, hubs: list[Any], publisher: str) -> None:
        self._hubs = hubs
        self._publishers = (
            [publisher] if len(hubs) == 1 else [f"{publisher}-{k}" for k in range(len(hubs))]
        )
        self._numbers = [itertools.count() for _ in hubs]

    def __call__(self, batch: list[dict[str, Any]]) -> list[Any]:
        shards = len(self._hubs)
        parts: dict[int, list[Encoded]] = {}
        for event in batch:
            encoded = encode_event(event)
            parts.setdefault(shard_of(encoded[1], shards), []).append(encoded)
        return [
            publish_lane(self._hubs[k], part).remote(
                part, TARGET_CHANNEL, self._publishers[k], next(self._numbers[k])
            )
            for k, part in sorted(parts.items())
        ]


def wait_shard_refs(handles: list[Any], timeout: float) -> None:
    """:func:`~control_plane.core.emitter.wait_refs` for :class:`ShardedSend`'s handles."""
    refs = [ref for handle in handles for ref in handle]
    if refs:
        wait_refs(refs, timeout)
