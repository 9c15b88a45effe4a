"""A sharded hub's rules: where an event goes, and the per-shard cursor. No Ray here.

With ``--hub-shards N`` (N > 1) the hub is N EventHub actors, each a log of its own with its
own ``seq`` and ``epoch``. An event lives on one shard, chosen by its channel:

* ``job:<id>`` channels by a stable hash (CRC-32, not Python's salted ``hash``) of the
  channel, so every event of one job, whoever publishes it (the job, the controller's
  ``job.created``), is on one shard, in the order it was appended there;
* everything else (``system``, ``audit``, broadcasts, ``send_to_client``) on shard 0.

A job publishes only to its own shard, so per-publisher and per-channel order hold as they
do with one hub. ``seq`` is per shard: a frame carries ``"shard": k`` beside its ``seq``
when N > 1 (never with one shard, whose wire is unchanged), and a cursor is one seq per
shard, on the wire ``{"0": 120, "1": 95}``. An integer ``since`` means that seq on every
shard (``since: 0``: from the oldest everywhere). The epoch of a sharded hub is its shards'
epochs joined with ``.`` in shard order.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from typing import Any

from control_plane.core.errors import ControlPlaneError
from control_plane.core.hub_log import TARGET_CHANNEL

JOB_PREFIX = "job:"
EPOCH_SEPARATOR = "."
MAX_SHARDS = 16

Since = int | Mapping[str, int]
"""A ``since`` on the wire: one seq (every shard), or one per shard keyed by its index."""


class InvalidSinceError(ControlPlaneError, ValueError):
    """A ``since`` that names a shard the hub does not have (an ``invalid_message``)."""

    code = "invalid_message"


def check_shards(shards: int) -> int:
    if not 1 <= shards <= MAX_SHARDS:
        raise ValueError(f"hub shards must be between 1 and {MAX_SHARDS}, not {shards}")
    return shards


def shard_of(channel: str, shards: int, target: str = TARGET_CHANNEL) -> int:
    """The shard of an event on ``channel`` sent to ``target`` (see the module's text)."""
    if shards == 1 or target != TARGET_CHANNEL or not channel.startswith(JOB_PREFIX):
        return 0
    return zlib.crc32(channel.encode()) % shards


def shard_of_job(job_id: str, shards: int) -> int:
    return shard_of(JOB_PREFIX + job_id, shards)


def shard_tag(shard: int) -> str:
    """What a shard splices into each frame's head, before its ``seq``."""
    return f',"shard":{shard}'


def parse_since(since: Since | None, shards: int) -> list[int] | None:
    """The per-shard cursor of a ``since`` (None: none given). Raises
    :class:`InvalidSinceError` for a key that names no shard or a seq below 0. A shard a
    mapping leaves out starts at 0."""
    if since is None:
        return None
    if isinstance(since, int):
        if since < 0:
            raise InvalidSinceError("since must be at least 0")
        return [since] * shards
    cursor = [0] * shards
    for key, seq in since.items():
        if not (isinstance(key, str) and key.isdigit() and int(key) < shards):
            raise InvalidSinceError(f"since names shard {key!r}; the hub has {shards} shards")
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
            raise InvalidSinceError(f"since of shard {key} must be an integer of at least 0")
        cursor[int(key)] = seq
    return cursor


def wire_cursor(cursor: Sequence[int]) -> int | dict[str, int]:
    """A cursor as the wire carries it: an integer with one shard, else a mapping."""
    if len(cursor) == 1:
        return cursor[0]
    return {str(k): seq for k, seq in enumerate(cursor)}


def join_epochs(epochs: Sequence[str | None]) -> str | None:
    """The epoch of the whole hub: one shard's own, or every shard's joined in order."""
    if any(e is None for e in epochs):
        return None
    return EPOCH_SEPARATOR.join(e for e in epochs if e is not None)


def split_epoch(epoch: str | None, shards: int) -> list[str | None]:
    """Each shard's epoch in a joined one (``None`` where it says nothing; an epoch of
    another shape matches no shard, so a replay says it could not recover)."""
    if epoch is None:
        return [None] * shards
    parts = epoch.split(EPOCH_SEPARATOR) if shards > 1 else [epoch]
    if len(parts) != shards:
        return [epoch] * shards
    return list(parts)


def advance(cursor: dict[str, int], shard: int | None, seq: int) -> bool:
    """A client's per-shard cursor after it read ``seq`` of ``shard`` (None: of the only
    shard, key ``"0"``); True when it moved."""
    key = str(shard or 0)
    if seq > cursor.get(key, 0):
        cursor[key] = seq
        return True
    return False


def sum_stats(stats: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The hub's stats from its shards' (``EventLog.stats``): one shard's as they are;
    else counts summed, and ``fill`` the fullest shard's (the one an alert is about)."""
    if len(stats) == 1:
        return stats[0]
    summed = {k: sum(s[k] for s in stats) for k in ("head", "size", "capacity", "bytes")}
    return {
        **stats[0],
        **summed,
        "epoch": join_epochs([s["epoch"] for s in stats]),
        "fill": max(s["fill"] for s in stats),
        "shards": list(stats),
    }


WireCursor = int | dict[str, int]
"""A cursor as the wire and the clients carry it (:func:`wire_cursor`)."""


def _combine(a: WireCursor, b: WireCursor, pick: Any) -> WireCursor:
    if isinstance(a, int) and isinstance(b, int):
        return int(pick(a, b))
    # An integer is that seq on every shard (what an integer ``since`` means).
    if isinstance(a, int):
        assert isinstance(b, dict)
        da, db = dict.fromkeys(b, a), b
    elif isinstance(b, int):
        da, db = a, dict.fromkeys(a, b)
    else:
        da, db = a, b
    keys = set(da) | set(db)
    return {k: int(pick(da.get(k, 0), db.get(k, 0))) for k in sorted(keys, key=int)}


def cursor_max(a: WireCursor, b: WireCursor) -> WireCursor:
    """Per shard, the later of two cursors (a shard one leaves out is at 0)."""
    return _combine(a, b, max)


def cursor_min(a: WireCursor, b: WireCursor) -> WireCursor:
    """Per shard, the earlier of two cursors."""
    return _combine(a, b, min)
