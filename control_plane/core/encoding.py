"""Events encoded by their publisher, so the hub only splices a ``seq`` into each frame.

An encoded event is ``(type, channel, head, tail)``; its frame is
``head + ',"seq":N' + tail``. :func:`encode_event` encodes any envelope with ``json``;
:class:`ProgressEncoder` builds a job's ``job.progress`` frames with f-strings, byte for
byte what :func:`encode_event` makes of the same envelope, because a job that reports
progress flat out spends most of its time here. No Ray here.
"""

from __future__ import annotations

import json
import re
from json.encoder import encode_basestring_ascii
from typing import Any

from control_plane.core.protocol import channel_for

Encoded = tuple[str, str, str, str]

PROGRESS = "job.progress"

_PLAIN = re.compile(r'^[^"\\\x00-\x1f\x7f-\uffff]*$')


def encode_event(event: dict[str, Any]) -> Encoded:
    """Encode an envelope ``{type, timestamp, data[, channel]}`` for the hub."""
    event_type = event["type"]
    data = event.get("data") or {}
    channel = event.get("channel") or channel_for(event_type, data)
    head = f'{{"type":{json_string(event_type)},"timestamp":{json_string(event["timestamp"])}'
    tail = f',"channel":{json_string(channel)},"data":{dumps(data)}}}'
    return event_type, channel, head, tail


def json_string(value: Any) -> str:
    """A JSON string; plain ASCII (types, timestamps, channels) is quoted without json."""
    if isinstance(value, str) and _PLAIN.match(value):
        return f'"{value}"'
    return dumps(value if isinstance(value, str) else str(value))


def dumps(value: Any) -> str:
    """Compact JSON, as the hub sends it; what JSON cannot hold becomes ``str(value)``."""
    return json.dumps(value, separators=(",", ":"), default=str)


class ProgressEncoder:
    """One job's ``job.progress`` frames, with data ``{progress[, message], job_id, status}``
    in that order (the order :meth:`jobs.context.JobControl.emit` builds it in)."""

    def __init__(self, job_id: str) -> None:
        self.channel = channel_for(PROGRESS, {"job_id": job_id})
        self._tail = f',"channel":{json_string(self.channel)},"data":{{"progress":'
        self._job_id = f',"job_id":{json_string(job_id)},"status":'

    def encode(self, timestamp: str, status: str, progress: float, message: Any) -> Encoded:
        """``progress`` must be a finite ``float`` (its ``repr`` is its JSON); ``timestamp``
        and ``status`` plain ASCII (what ``utc_now_iso`` and ``JobState`` give)."""
        if message is None:
            text = ""
        elif isinstance(message, str):
            text = ',"message":' + encode_basestring_ascii(message)
        else:
            text = ',"message":' + dumps(message)
        return (
            PROGRESS,
            self.channel,
            f'{{"type":"job.progress","timestamp":"{timestamp}"',
            f'{self._tail}{progress!r}{text}{self._job_id}"{status}"}}}}',
        )
