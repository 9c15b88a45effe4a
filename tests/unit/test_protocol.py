"""The wire protocol: client frames in, event envelopes out."""

from __future__ import annotations

import json
import re

import pytest

from control_plane.core.protocol import (
    BadFrame,
    Event,
    JobCommand,
    Ping,
    Pong,
    Subscribe,
    Unsubscribe,
    ack,
    channel_for,
    encode,
    error_reply,
    is_valid_channel,
    normalize_event,
    parse_client_message,
    utc_now_iso,
)

ISO_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


def bad(frame: str | bytes | dict) -> BadFrame:
    text = frame if isinstance(frame, str | bytes) else json.dumps(frame)
    with pytest.raises(BadFrame) as info:
        parse_client_message(text)
    return info.value


# --- parse_client_message: good frames --------------------------------------------------------


def test_subscribe_parses_with_channels_since_and_request_id():
    msg = parse_client_message(
        json.dumps(
            {
                "type": "subscribe",
                "channels": ["job:7f3a", "jobs", "system", "*"],
                "since": 0,
                "id": "r1",
            }
        )
    )
    assert isinstance(msg, Subscribe)
    assert msg.channels == ["job:7f3a", "jobs", "system", "*"]
    assert msg.since == 0
    assert msg.id == "r1"


def test_subscribe_without_since_leaves_it_unset():
    msg = parse_client_message('{"type": "subscribe", "channels": ["jobs"]}')
    assert isinstance(msg, Subscribe)
    assert msg.since is None
    assert msg.id is None


def test_unsubscribe_parses():
    msg = parse_client_message('{"type": "unsubscribe", "channels": ["jobs"], "id": 4}')
    assert isinstance(msg, Unsubscribe)
    assert msg.channels == ["jobs"]
    assert msg.id == 4


@pytest.mark.parametrize("command", ["pause", "resume", "cancel"])
def test_job_commands_parse_and_name_their_command(command):
    msg = parse_client_message(json.dumps({"type": f"job.{command}", "job_id": "j1", "id": 9}))
    assert isinstance(msg, JobCommand)
    assert msg.job_id == "j1"
    assert msg.command == command
    assert msg.id == 9


def test_ping_and_pong_parse():
    assert isinstance(parse_client_message('{"type": "ping"}'), Ping)
    assert isinstance(parse_client_message('{"type": "pong"}'), Pong)


def test_bytes_frames_parse_like_text():
    assert isinstance(parse_client_message(b'{"type": "ping"}'), Ping)


# --- parse_client_message: bad frames ---------------------------------------------------------


def test_invalid_json_is_refused_as_invalid_json():
    err = bad("{not json")
    assert err.code == "invalid_json"
    assert "not valid JSON" in err.message
    assert err.request_id is None


def test_undecodable_bytes_are_refused_as_invalid_json():
    assert bad(b"\xff\xfe\x00").code == "invalid_json"


@pytest.mark.parametrize("frame", ["[1, 2]", '"ping"', "42", "null"])
def test_a_frame_that_is_not_an_object_is_refused(frame):
    err = bad(frame)
    assert err.code == "invalid_message"
    assert "JSON object" in err.message


@pytest.mark.parametrize("frame", [{"id": 7}, {"type": None, "id": 7}])
def test_a_frame_without_type_is_refused_and_echoes_the_request_id(frame):
    err = bad(frame)
    assert err.code == "missing_type"
    assert "type" in err.message
    assert err.request_id == 7


def test_an_unknown_type_is_refused_naming_it_and_the_known_ones():
    err = bad({"type": "job.explode", "id": "r1"})
    assert err.code == "unknown_type"
    assert "job.explode" in err.message
    assert "subscribe" in err.message
    assert err.request_id == "r1"


def test_a_missing_field_is_named():
    err = bad({"type": "subscribe", "id": 3})
    assert err.code == "invalid_message"
    assert err.message == "missing field 'channels'"
    assert err.request_id == 3


def test_a_missing_job_id_is_named():
    err = bad({"type": "job.cancel", "id": "c"})
    assert err.code == "invalid_message"
    assert "job_id" in err.message
    assert err.request_id == "c"


def test_an_extra_field_is_named():
    err = bad({"type": "subscribe", "channels": ["jobs"], "chanels": ["x"], "id": "r"})
    assert err.code == "invalid_message"
    assert err.message == "unexpected field 'chanels'"
    assert err.request_id == "r"


@pytest.mark.parametrize(
    ("frame", "field"),
    [
        ({"type": "job.pause", "job_id": 5}, "job_id"),
        ({"type": "subscribe", "channels": "jobs"}, "channels"),
        ({"type": "subscribe", "channels": ["jobs"], "since": "soon"}, "since"),
        ({"type": "subscribe", "channels": ["jobs"], "since": 1.5}, "since"),
    ],
)
def test_a_field_of_the_wrong_type_is_named(frame, field):
    err = bad(frame)
    assert err.code == "invalid_message"
    assert err.message.startswith(f"{field}:")


def test_an_unknown_channel_is_named_with_the_valid_forms():
    err = bad({"type": "subscribe", "channels": ["jobs", "bogus"], "id": 1})
    assert err.code == "invalid_message"
    assert "'bogus'" in err.message
    assert "job:<id>" in err.message
    assert err.request_id == 1


def test_an_empty_channel_list_is_refused():
    err = bad({"type": "subscribe", "channels": []})
    assert err.code == "invalid_message"
    assert err.message.startswith("channels:")


def test_a_negative_since_is_refused():
    err = bad({"type": "subscribe", "channels": ["jobs"], "since": -1, "id": "s"})
    assert err.code == "invalid_message"
    assert err.message.startswith("since:")
    assert "greater than or equal to 0" in err.message
    assert err.request_id == "s"


def test_an_empty_job_id_is_refused():
    err = bad({"type": "job.pause", "job_id": ""})
    assert err.code == "invalid_message"
    assert err.message.startswith("job_id:")


def test_an_unreadable_request_id_is_not_echoed():
    err = bad({"type": "nope", "id": {"x": 1}})
    assert err.code == "unknown_type"
    assert err.request_id is None


# --- channels -------------------------------------------------------------------------------


@pytest.mark.parametrize("channel", ["jobs", "system", "*", "job:7f3a", "job:a_b.c-D9"])
def test_known_channels_are_valid(channel):
    assert is_valid_channel(channel)


@pytest.mark.parametrize(
    "channel", ["", "job", "job:", "job:has space", "job:a/b", "Jobs", "systems", "agent:x"]
)
def test_other_channels_are_invalid(channel):
    assert not is_valid_channel(channel)


def test_a_job_id_longer_than_128_characters_is_not_a_valid_channel():
    assert is_valid_channel("job:" + "a" * 128)
    assert not is_valid_channel("job:" + "a" * 129)


@pytest.mark.parametrize(
    ("event_type", "data", "channel"),
    [
        ("job.progress", {"job_id": "7f3a"}, "job:7f3a"),
        ("job.created", {"job_id": "7f3a"}, "job:7f3a"),
        ("agent.output", {"job_id": "7f3a", "agent_id": "a-1"}, "job:7f3a"),
        ("app.note", {"job_id": "7f3a"}, "job:7f3a"),
        ("system.metrics", {}, "system"),
        ("system.alert", {"job_id": "7f3a"}, "system"),
        ("app.note", {}, "system"),
    ],
)
def test_channel_for_puts_job_events_on_their_job_and_system_events_on_system(
    event_type, data, channel
):
    assert channel_for(event_type, data) == channel


# --- normalize_event ------------------------------------------------------------------------


def test_the_seeds_flat_form_becomes_an_envelope_with_data():
    event = normalize_event({"type": "job.progress", "job_id": "j1", "progress": 75})
    assert set(event) == {"type", "timestamp", "data"}
    assert event["type"] == "job.progress"
    assert ISO_UTC.match(event["timestamp"])
    assert event["data"]["job_id"] == "j1"
    assert event["data"]["progress"] == 75.0
    assert isinstance(event["data"]["progress"], float)
    assert event["data"]["status"] == "running"
    assert channel_for(event["type"], event["data"]) == "job:j1"


def test_normalize_merges_data_with_flat_keys_and_keeps_a_given_timestamp():
    event = normalize_event(
        {
            "type": "job.completed",
            "timestamp": "2026-01-15T10:30:00.123Z",
            "job_id": "j1",
            "data": {"result": {"n": 3}},
        }
    )
    assert event["timestamp"] == "2026-01-15T10:30:00.123Z"
    assert event["data"]["result"] == {"n": 3}
    assert event["data"]["job_id"] == "j1"
    assert event["data"]["status"] == "completed"


@pytest.mark.parametrize(
    ("event_type", "status"),
    [
        ("job.created", "pending"),
        ("job.started", "running"),
        ("job.paused", "paused"),
        ("job.resumed", "running"),
        ("job.cancelled", "cancelled"),
    ],
)
def test_job_events_get_a_default_status(event_type, status):
    assert normalize_event({"type": event_type, "job_id": "j"})["data"]["status"] == status


def test_an_explicit_status_is_kept():
    event = normalize_event({"type": "job.progress", "job_id": "j", "progress": 1, "status": "x"})
    assert event["data"]["status"] == "x"


@pytest.mark.parametrize(
    ("message", "needle"),
    [
        ({"type": "job.progress", "job_id": "j", "progress": 175}, "progress"),
        ({"type": "job.progress", "job_id": "j", "progress": -1}, "progress"),
        ({"type": "job.progress", "progress": 5}, "job_id"),
        ({"type": "job.failed", "job_id": "j"}, "error"),
        ({"type": "agent.started", "job_id": "j", "agent_id": "a"}, "name"),
        ({"type": "agent.output", "job_id": "j", "output": "x"}, "agent_id"),
        ({"type": "system.alert", "level": "loud", "message": "m"}, "level"),
        ({"type": "system.alert", "level": "info"}, "message"),
    ],
)
def test_known_event_types_are_validated_and_the_error_names_the_field(message, needle):
    with pytest.raises(ValueError, match=needle) as info:
        normalize_event(message)
    assert message["type"] in str(info.value)


@pytest.mark.parametrize("event_type", ["app.note", "my_app.step.done", "custom.v2"])
def test_custom_dotted_types_are_accepted_as_they_are(event_type):
    event = normalize_event({"type": event_type, "anything": [1, 2], "data": {"k": "v"}})
    assert event["type"] == event_type
    assert event["data"] == {"anything": [1, 2], "k": "v"}


@pytest.mark.parametrize("event_type", [None, 5, "", "note", "App.Note", "app.", ".app", "a b.c"])
def test_types_that_are_not_dotted_lowercase_are_refused(event_type):
    with pytest.raises(ValueError, match="type"):
        normalize_event({"type": event_type})


def test_a_message_that_is_not_a_dict_is_refused():
    with pytest.raises(ValueError, match="dict"):
        normalize_event(["job.progress"])  # type: ignore[arg-type]


@pytest.mark.parametrize("data", [5, "hello"])
def test_a_data_that_is_not_an_object_is_refused_naming_data(data):
    with pytest.raises(ValueError, match="data"):
        normalize_event({"type": "app.note", "data": data})


def test_a_normalized_event_is_a_valid_envelope():
    event = normalize_event({"type": "system.alert", "level": "warning", "message": "m"})
    parsed = Event.model_validate(event)
    assert parsed.data == {"level": "warning", "message": "m"}


# --- replies --------------------------------------------------------------------------------


def test_ack_and_error_replies_carry_the_request_id():
    a = ack("r1", recovered=True)
    assert a["type"] == "ack"
    assert a["data"] == {"request_id": "r1", "recovered": True}
    e = error_reply(7, "unknown_type", "nope")
    assert e["type"] == "error"
    assert e["data"] == {"request_id": 7, "code": "unknown_type", "message": "nope"}
    assert ISO_UTC.match(a["timestamp"])
    assert ISO_UTC.match(e["timestamp"])


def test_encode_is_compact_json():
    assert encode({"type": "pong", "data": {}}) == '{"type":"pong","data":{}}'


def test_timestamps_are_iso_utc_with_milliseconds():
    assert ISO_UTC.match(utc_now_iso())
