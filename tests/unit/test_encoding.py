"""The publisher's encodings, spliced with a seq, are byte for byte the frame ``json.dumps``
makes of the same event: the envelope, ``data``, then ``data``'s fields again at the top
level (but those named like the envelope's own keys)."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from control_plane.core.encoding import (
    ENVELOPE_KEYS,
    Encoded,
    ProgressEncoder,
    encode_event,
    json_string,
)
from control_plane.core.protocol import make_event
from jobs.lifecycle import JobState

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
    """The frame as json.dumps writes it: keys in the contract's order, then data's fields."""
    frame = {"type": event_type, "timestamp": TIMESTAMP, "seq": SEQ, "channel": channel}
    top = {k: v for k, v in data.items() if k not in ENVELOPE_KEYS}
    return json.dumps({**frame, "data": data, **top}, separators=(",", ":"), default=str)


def progress_data(job_id: str, status: str, progress: float, message: Any) -> dict[str, Any]:
    """The data of what JobControl.emit("job.progress", ...) builds."""
    data: dict[str, Any] = {"progress": progress}
    if message is not None:
        data["message"] = message
    return {**data, "job_id": job_id, "status": status}


def reference(job_id: str, status: str, progress: float, message: Any) -> str:
    return frame_text(
        "job.progress", f"job:{job_id}", progress_data(job_id, status, progress, message)
    )


@pytest.mark.parametrize("progress", PROGRESS)
@pytest.mark.parametrize("message", MESSAGES)
def test_a_progress_frame_is_what_json_dumps_makes(progress: float, message: Any) -> None:
    encoded = ProgressEncoder("7f3a").encode(TIMESTAMP, "running", progress, message)
    assert encoded[:2] == ("job.progress", "job:7f3a")
    assert spliced(encoded) == reference("7f3a", "running", progress, message)


@pytest.mark.parametrize("job_id", ["j1", "a.b-c_D9", "x" * 128])
@pytest.mark.parametrize("status", ["running", "pausing", "paused"])
def test_a_progress_frame_names_its_job_and_status(job_id: str, status: str) -> None:
    encoded = ProgressEncoder(job_id).encode(TIMESTAMP, status, 12.5, "m")
    assert spliced(encoded) == reference(job_id, status, 12.5, "m")


def test_a_progress_frame_is_valid_json_with_the_seq_spliced_in() -> None:
    event_type, channel, head, tail = ProgressEncoder("7f3a").encode(
        TIMESTAMP, "running", 33.333333333333336, 'say "hi" ✓'
    )
    frame = json.loads(f'{head},"seq":5{tail}')
    data = {
        "progress": 33.333333333333336,
        "message": 'say "hi" ✓',
        "job_id": "7f3a",
        "status": "running",
    }
    assert frame == {
        "type": "job.progress",
        "timestamp": TIMESTAMP,
        "seq": 5,
        "channel": "job:7f3a",
        "data": data,
        **data,
    }
    assert (event_type, channel) == ("job.progress", "job:7f3a")


def test_the_seeds_reading_and_the_message_format_both_hold() -> None:
    """The seed's JavaScript reads ``message.progress``; its message format has ``data``."""
    frame = json.loads(spliced(ProgressEncoder("7f3a").encode(TIMESTAMP, "running", 75.0, None)))
    assert frame["progress"] == frame["data"]["progress"] == 75.0
    completed = encode_event(
        make_event("job.completed", {"result": {"steps": 5}, "job_id": "7f3a", "status": "x"})
    )
    frame = json.loads(spliced(completed))
    assert frame["result"] == frame["data"]["result"] == {"steps": 5}
    output = encode_event(make_event("agent.completed", {"agent_id": "planner-1", "job_id": "j"}))
    frame = json.loads(spliced(output))
    assert frame["agent_id"] == frame["data"]["agent_id"] == "planner-1"


@pytest.mark.parametrize(
    ("event", "channel"),
    [
        ({"type": "job.started", "data": {"job_id": "j1", "name": "x"}}, "job:j1"),
        ({"type": "app.note", "data": {"job_id": "j1", "text": 'é "q"'}}, "job:j1"),
        ({"type": "system.metrics", "data": {"nodes_alive": 1}}, "system"),
        ({"type": "app.note", "data": {}, "channel": "jobs"}, "jobs"),
        ({"type": "app.note", "data": {"when": object}}, "system"),
        ({"type": "app.note", "data": {1: "int key", None: "null key"}}, "system"),
    ],
)
def test_encode_event_makes_the_frame_json_dumps_makes(event: dict[str, Any], channel: str) -> None:
    encoded = encode_event({**event, "timestamp": TIMESTAMP})
    assert encoded[:2] == (event["type"], channel)
    assert spliced(encoded) == frame_text(event["type"], channel, event["data"])


@pytest.mark.parametrize(
    "data",
    [
        {"type": "inner", "seq": 3, "channel": "c", "timestamp": "t", "data": {"x": 1}, "a": 1},
        {"a": 1, "seq": 3, "b": [2]},
        {"seq": 3},
        {"data": {"nested": True}},
    ],
)
def test_a_data_field_named_like_the_envelope_stays_inside_data(data: dict[str, Any]) -> None:
    text = spliced(encode_event({"type": "app.note", "timestamp": TIMESTAMP, "data": data}))
    assert text == frame_text("app.note", "system", data)
    frame = json.loads(text)  # the last duplicate key would win: there must be none
    assert (frame["type"], frame["seq"], frame["channel"]) == ("app.note", SEQ, "system")
    assert frame["data"] == data
    assert {k: v for k, v in frame.items() if k not in ENVELOPE_KEYS} == {
        k: v for k, v in data.items() if k not in ENVELOPE_KEYS
    }
    assert text.count('"seq":') == 1 + ("seq" in data)


def test_an_event_without_data_has_no_top_level_copies() -> None:
    text = spliced(encode_event({"type": "app.note", "timestamp": TIMESTAMP, "channel": "jobs"}))
    envelope = f'{{"type":"app.note","timestamp":"{TIMESTAMP}","seq":{SEQ},"channel":"jobs"'
    assert text == envelope + ',"data":{}}'


# --- properties ----------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
data_keys = st.sampled_from(sorted(ENVELOPE_KEYS)) | st.text(max_size=12)
data_dicts = st.dictionaries(data_keys, json_values, max_size=8)
job_ids = st.text(min_size=1, max_size=40)
statuses = st.sampled_from([s.value for s in JobState])
progresses = st.floats(min_value=0.0, max_value=100.0, allow_nan=False)
messages = st.none() | st.text() | json_values


@given(data=data_dicts, event_type=st.sampled_from(["app.note", "job.started", "system.alert"]))
def test_any_data_makes_the_frame_json_dumps_makes(data: dict[str, Any], event_type: str) -> None:
    data = {**data, "job_id": "j1"} if event_type.startswith("job.") else data
    encoded = encode_event({"type": event_type, "timestamp": TIMESTAMP, "data": data})
    text = spliced(encoded)
    assert text == frame_text(event_type, encoded[1], data)
    frame = json.loads(text)
    assert frame["seq"] == SEQ and frame["type"] == event_type


@given(job_id=job_ids, status=statuses, progress=progresses, message=messages)
def test_a_progress_frame_is_byte_for_byte_what_encode_event_makes(
    job_id: str, status: str, progress: float, message: Any
) -> None:
    assert math.isfinite(progress)
    data = progress_data(job_id, status, progress, message)
    by_json = encode_event({"type": "job.progress", "timestamp": TIMESTAMP, "data": data})
    fast = ProgressEncoder(job_id).encode(TIMESTAMP, status, progress, message)
    assert fast == by_json
    assert spliced(fast) == reference(job_id, status, progress, message)


@given(value=st.text())
def test_json_string_is_what_json_dumps_makes_of_any_text(value: str) -> None:
    assert json_string(value) == json.dumps(value)


def test_a_job_id_beyond_the_basic_plane_is_escaped_as_json_dumps_escapes_it() -> None:
    fast = ProgressEncoder("\U00010000").encode(TIMESTAMP, "running", 1.0, None)
    assert '"job_id":"\\ud800\\udc00"' in fast[3]
    assert spliced(fast) == reference("\U00010000", "running", 1.0, None)
