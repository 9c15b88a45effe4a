"""The publisher's encodings, spliced with a seq, are byte for byte the frame ``json.dumps``
makes of the same event."""

from __future__ import annotations

import json
from typing import Any

import pytest

from control_plane.core.encoding import Encoded, ProgressEncoder, encode_event

TIMESTAMP = "2026-01-15T10:30:00.123Z"

PROGRESS = [0.0, 100.0, 33.333333333333336, 66.66666666666667, 42.5, 1e-07, 5e-324, 99.99999]
MESSAGES: list[Any] = [
    None,
    "",
    "working",
    'a "quoted" word',
    "back\\slash and /slash",
    "naïve café ✓ 🚀 中文",
    "new\nline\ttab\x00nul\x7fdel",
    "</script><b>",
    7,  # not a str: JSON as json.dumps writes it
    ["a", 1],
]


SEQ = 1042


def spliced(encoded: Encoded) -> str:
    _, _, head, tail = encoded
    return f'{head},"seq":{SEQ}{tail}'


def frame_text(event_type: str, channel: str, data: dict[str, Any]) -> str:
    """The frame as json.dumps writes it, keys in the contract's order."""
    frame = {"type": event_type, "timestamp": TIMESTAMP, "seq": SEQ, "channel": channel}
    return json.dumps({**frame, "data": data}, separators=(",", ":"), default=str)


def reference(job_id: str, status: str, progress: float, message: Any) -> str:
    """The frame of what JobControl.emit("job.progress", ...) builds."""
    data: dict[str, Any] = {"progress": progress}
    if message is not None:
        data["message"] = message
    data = {**data, "job_id": job_id, "status": status}
    return frame_text("job.progress", f"job:{job_id}", data)


@pytest.mark.parametrize("progress", PROGRESS)
@pytest.mark.parametrize("message", MESSAGES)
def test_a_progress_frame_is_what_json_dumps_makes(progress, message):
    encoded = ProgressEncoder("7f3a").encode(TIMESTAMP, "running", progress, message)
    assert encoded[:2] == ("job.progress", "job:7f3a")
    assert spliced(encoded) == reference("7f3a", "running", progress, message)


@pytest.mark.parametrize("job_id", ["j1", "a.b-c_D9", "x" * 128])
@pytest.mark.parametrize("status", ["running", "pausing", "paused"])
def test_a_progress_frame_names_its_job_and_status(job_id, status):
    encoded = ProgressEncoder(job_id).encode(TIMESTAMP, status, 12.5, "m")
    assert spliced(encoded) == reference(job_id, status, 12.5, "m")


def test_a_progress_frame_is_valid_json_with_the_seq_spliced_in():
    event_type, channel, head, tail = ProgressEncoder("7f3a").encode(
        TIMESTAMP, "running", 33.333333333333336, 'say "hi" ✓'
    )
    frame = json.loads(f'{head},"seq":5{tail}')
    assert frame == {
        "type": "job.progress",
        "timestamp": TIMESTAMP,
        "seq": 5,
        "channel": "job:7f3a",
        "data": {
            "progress": 33.333333333333336,
            "message": 'say "hi" ✓',
            "job_id": "7f3a",
            "status": "running",
        },
    }
    assert (event_type, channel) == ("job.progress", "job:7f3a")


@pytest.mark.parametrize(
    ("event", "channel"),
    [
        ({"type": "job.started", "data": {"job_id": "j1", "name": "x"}}, "job:j1"),
        ({"type": "app.note", "data": {"job_id": "j1", "text": 'é "q"'}}, "job:j1"),
        ({"type": "system.metrics", "data": {"nodes_alive": 1}}, "system"),
        ({"type": "app.note", "data": {}, "channel": "jobs"}, "jobs"),
        ({"type": "app.note", "data": {"when": object}}, "system"),
    ],
)
def test_encode_event_makes_the_frame_json_dumps_makes(event, channel):
    encoded = encode_event({**event, "timestamp": TIMESTAMP})
    assert encoded[:2] == (event["type"], channel)
    assert spliced(encoded) == frame_text(event["type"], channel, event["data"])
