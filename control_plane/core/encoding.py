"""Events encoded by their publisher, so the hub only splices a ``seq`` into each frame.

An encoded event is ``(type, channel, head, tail)``; its frame is
``head + ',"seq":N' + tail``::

    {"type":"job.progress","timestamp":"...","seq":1042,"channel":"job:7f3a",
     "data":{"job_id":"7f3a","status":"running","progress":75.0},
     "job_id":"7f3a","status":"running","progress":75.0}

Every ``data`` field is repeated at the top level (but those named like the envelope's own
keys, :data:`ENVELOPE_KEYS`): the seed's JavaScript reads ``message.progress`` while its
message format nests the fields in ``data``, and both readings must hold. The copies are
the text of ``data`` spliced a second time, never a second encoding.

:func:`encode_event` encodes any envelope with ``json``; :class:`ProgressEncoder` builds a
job's ``job.progress`` frames with f-strings, byte for byte what :func:`encode_event` makes
of the same envelope, because a job that reports progress flat out spends most of its time
here. No Ray here.
"""

from __future__ import annotations

import re
from json.encoder import encode_basestring_ascii
from typing import Any

from control_plane.core.jsonwire import dumps
from control_plane.core.protocol import channel_for

__all__ = [
    "ENVELOPE_KEYS",
    "PROGRESS",
    "Encoded",
    "ProgressEncoder",
    "dumps",
    "encode_event",
    "json_string",
]

Encoded = tuple[str, str, str, str]

PROGRESS = "job.progress"

ENVELOPE_KEYS = frozenset({"type", "timestamp", "seq", "shard", "channel", "data"})
"""Keys of the frame itself: a ``data`` field with one of these names stays in ``data``."""

# Printable ASCII but the quote and the backslash: what json.dumps writes as is.
_PLAIN = re.compile(r"[ !#-\[\]-~]*")


def encode_event(event: dict[str, Any]) -> Encoded:
    """Encode an envelope ``{type, timestamp, data[, channel]}`` for the hub."""
    event_type = event["type"]
    data = event.get("data") or {}
    channel = event.get("channel") or channel_for(event_type, data)
    head = f'{{"type":{json_string(event_type)},"timestamp":{json_string(event["timestamp"])}'
    data_json = dumps(data)
    tail = f',"channel":{json_string(channel)},"data":{data_json}{_top_level(data, data_json)}}}'
    return event_type, channel, head, tail


def _top_level(data: Any, data_json: str) -> str:
    """``,"k":v,...``: the fields of ``data`` for the top level, or ``""`` when none."""
    if not isinstance(data, dict):
        return ""
    if ENVELOPE_KEYS.isdisjoint(data):
        fields = data_json[1:-1]  # the same text: data's own members, in its order
    else:
        fields = dumps({k: v for k, v in data.items() if k not in ENVELOPE_KEYS})[1:-1]
    return f",{fields}" if fields else ""


def json_string(value: Any) -> str:
    """A JSON string; plain ASCII (types, timestamps, channels) is quoted without json."""
    if isinstance(value, str) and _PLAIN.fullmatch(value):
        return f'"{value}"'
    return dumps(value if isinstance(value, str) else str(value))


class ProgressEncoder:
    """One job's ``job.progress`` frames, with data ``{progress[, message], job_id, status}``
    in that order (the order :meth:`jobs.context.JobControl.emit` builds it in), each field
    also at the top level as :func:`encode_event` puts it."""

    def __init__(self, job_id: str) -> None:
        self.channel = channel_for(PROGRESS, {"job_id": job_id})
        self._tail = f',"channel":{json_string(self.channel)},"data":{{"progress":'
        self._job_id = f',"job_id":{json_string(job_id)},"status":"'

    def encode(self, timestamp: str, status: str, progress: float, message: Any) -> Encoded:
        """``progress`` must be a finite ``float`` (its ``repr`` is its JSON); ``timestamp``
        and ``status`` plain ASCII (what ``utc_now_iso`` and ``JobState`` give)."""
        if message is None:
            text = ""
        elif isinstance(message, str):
            text = ',"message":' + encode_basestring_ascii(message)
        else:
            text = ',"message":' + dumps(message)
        fields = f'{progress!r}{text}{self._job_id}{status}"'
        return (
            PROGRESS,
            self.channel,
            f'{{"type":"job.progress","timestamp":"{timestamp}"',
            f'{self._tail}{fields}}},"progress":{fields}}}',
        )
