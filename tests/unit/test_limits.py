"""The limits' cores (``control_plane.core.limits``) and where they are applied without a
socket: client frames, events where jobs make them, the hub's log and its publish, the
controller's idempotency cache. No Ray, milliseconds."""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

import pytest

from control_plane.actors.hub import EventHub
from control_plane.core.encoding import encode_event
from control_plane.core.errors import EventTooLargeError, InvalidEventError, PublishError
from control_plane.core.event_store import NullStore
from control_plane.core.hub_log import EventLog
from control_plane.core.jsonwire import dumps
from control_plane.core.limits import (
    MAX_CLOSE_REASON_BYTES,
    SERVER_ONLY_TYPES,
    TokenBucket,
    check_encoded,
    close_reason,
    nesting_depth,
)
from control_plane.core.protocol import BadFrame, make_event, parse_client_message
from control_plane.core.registry import IdempotencyCache
from jobs.context import JobControl

# --- client frames -------------------------------------------------------------------------


def test_forty_thousand_brackets_are_refused_as_too_deep_before_json_recurses():
    with pytest.raises(BadFrame) as caught:
        parse_client_message("[" * 40_000)
    assert caught.value.code == "too_deep"
    assert "32" in caught.value.message


def test_deep_objects_and_a_frame_just_at_the_limit():
    deep = '{"a":' * 40 + "1" + "}" * 40
    with pytest.raises(BadFrame, match="nested over 32"):
        parse_client_message(deep)
    assert nesting_depth("[" * 32 + "]" * 32, 32) == 0
    assert nesting_depth("[" * 33 + "]" * 33, 32) == 33


def test_brackets_inside_strings_nest_nothing():
    channel = "job:" + "a" * 10
    text = json.dumps({"type": "subscribe", "channels": [channel], "id": "[" * 500 + '\\"{'})
    assert nesting_depth(text, 32) == 0
    with pytest.raises(BadFrame) as caught:  # the id is over its own limit, not too deep
        parse_client_message(text)
    assert caught.value.code == "invalid_message"


def test_a_request_id_over_128_characters_is_refused_and_not_echoed():
    with pytest.raises(BadFrame) as caught:
        parse_client_message(json.dumps({"type": "ping", "id": "x" * 129}))
    assert caught.value.code == "invalid_message"
    assert caught.value.request_id is None
    assert "128" in caught.value.message
    assert parse_client_message(json.dumps({"type": "ping", "id": "x" * 128})).id == "x" * 128


def test_a_request_id_beyond_64_bits_is_refused():
    with pytest.raises(BadFrame, match="64-bit"):
        parse_client_message(json.dumps({"type": "ping", "id": 2**64}))
    with pytest.raises(BadFrame) as caught:  # beyond Python's digit limit: not even JSON
        parse_client_message('{"type":"ping","id":' + "9" * 5000 + "}")
    assert caught.value.code == "invalid_json"


def test_invalid_utf8_bytes_are_an_invalid_json_error():
    with pytest.raises(BadFrame) as caught:
        parse_client_message(b'{"type":"ping","id":"\xff"}')
    assert caught.value.code == "invalid_json"


# --- close reasons -------------------------------------------------------------------------


def test_a_close_reason_is_cut_to_123_bytes_of_utf8_on_a_character_boundary():
    reason = "Origin 'http://" + "é" * 200 + "' is not allowed"
    cut = close_reason(reason)
    assert len(cut.encode()) <= MAX_CLOSE_REASON_BYTES
    assert reason.startswith(cut)
    assert close_reason("slow consumer") == "slow consumer"
    assert len(close_reason("€" * 100).encode()) == 123  # 41 three-byte characters


# --- the token bucket ----------------------------------------------------------------------


def test_a_token_bucket_allows_its_burst_then_its_rate():
    bucket = TokenBucket(rate=10, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert not bucket.take(0.05)  # half a token
    assert bucket.take(0.1)
    assert not bucket.take(0.1)
    assert all(bucket.take(100.0) for _ in range(3))  # refilled to the burst, no more
    assert not bucket.take(100.0)


def test_a_token_bucket_needs_a_rate_and_a_burst():
    with pytest.raises(ValueError):
        TokenBucket(rate=0, burst=1, now=0.0)


# --- events where they are made ------------------------------------------------------------


def control(max_event_bytes: int = 2000) -> tuple[JobControl, list[Any]]:
    sent: list[Any] = []
    ctl = JobControl(
        "j1",
        "j",
        "me",
        "2026-01-01T00:00:00.000Z",
        lambda e, u: sent.append(e),
        max_event_bytes=max_event_bytes,
    )
    ctl.start()
    sent.clear()
    return ctl, sent


def test_nan_is_refused_by_the_wire_encoding():
    for value in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError):
            dumps({"x": value})


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_a_non_finite_progress_raises_in_the_job_and_sends_nothing(value):
    ctl, sent = control()
    with pytest.raises(InvalidEventError, match="progress must be a finite number"):
        ctl.set_progress(value, None)
    assert sent == []
    assert ctl.progress == 0.0


def test_a_nan_in_an_event_raises_in_the_job_and_sends_nothing():
    ctl, sent = control()
    with pytest.raises(InvalidEventError, match=r"app\.note"):
        ctl.emit_from_body("app.note", score=math.nan)
    with pytest.raises(InvalidEventError):
        ctl.set_progress(5, {"loss": math.inf})  # type: ignore[arg-type]
    assert sent == []


def test_an_oversize_progress_message_raises_naming_its_size_and_the_limit():
    ctl, sent = control(max_event_bytes=2000)
    with pytest.raises(EventTooLargeError) as caught:
        ctl.set_progress(50, "x" * 50_000)
    assert (caught.value.size, caught.value.limit) == (50_000, 2000)
    assert "50000 bytes" in caught.value.message and "2000-byte" in caught.value.message
    assert isinstance(caught.value, ValueError) and caught.value.code == "event_too_large"
    # a message that fits alone but not twice over (the frame repeats data at the top level)
    with pytest.raises(EventTooLargeError):
        ctl.set_progress(50, "y" * 1500)
    assert sent == []
    ctl.set_progress(50, "fine")
    assert len(sent) == 1


def test_an_oversize_custom_event_raises_and_sends_nothing():
    ctl, sent = control(max_event_bytes=2000)
    with pytest.raises(EventTooLargeError, match=r"app\.blob"):
        ctl.emit_from_body("app.blob", payload="z" * 5000)
    assert sent == []


@pytest.mark.parametrize("event_type", [*sorted(SERVER_ONLY_TYPES), "Bad", "nodot"])
def test_a_job_cannot_emit_the_gateways_own_frame_types(event_type):
    ctl, sent = control()
    with pytest.raises(InvalidEventError):
        ctl.emit_from_body(event_type, request_id="r1")
    assert sent == []


# --- the hub -------------------------------------------------------------------------------


def encoded(event_type: str = "app.note", **data: Any) -> Any:
    return encode_event(make_event(event_type, {"job_id": "j1", "status": "running", **data}))


async def test_the_hub_refuses_an_oversize_event_whole_and_appends_nothing():
    hub = EventHub(store=NullStore(), max_event_bytes=4096, history_bytes=1 << 20)
    small, big = encoded(n=1), encoded(blob="b" * 10_000)
    with pytest.raises(EventTooLargeError, match="4096-byte"):
        await hub.publish_encoded([small, big])
    assert (await hub.head())[1] == 0
    assert await hub.publish_encoded([small]) == 1


async def test_the_hub_refuses_server_only_types_and_nan():
    hub = EventHub(store=NullStore())
    for event_type in ("ack", "error", "pong", "welcome", "job.snapshot"):
        with pytest.raises(InvalidEventError):
            await hub.publish_encoded([encoded(event_type)])
    with pytest.raises(InvalidEventError):
        await hub.publish([{"type": "app.note", "timestamp": "t", "data": {"x": math.nan}}])
    with pytest.raises(PublishError):  # a numbered batch too, before it is admitted
        await hub.publish_encoded([encoded("ack")], "", "pub", 0)
    assert (await hub.head())[1] == 0


def test_a_hub_whose_history_cannot_hold_one_event_is_refused():
    with pytest.raises(ValueError, match="history_bytes"):
        EventHub(store=NullStore(), history_bytes=1000, max_event_bytes=4096)


def test_check_encoded_counts_the_whole_frame():
    event = encoded(blob="c" * 100)
    size = len(event[2]) + len(event[3])
    check_encoded(event, size)
    with pytest.raises(EventTooLargeError):
        check_encoded(event, size - 1)


# --- history in bytes ----------------------------------------------------------------------


def frame_size(log: EventLog) -> int:
    return sum(len(e.frame) - len(f',"seq":{e.seq}') for e in log.read(0))


def test_the_history_keeps_at_most_its_byte_budget_dropping_the_oldest():
    log = EventLog(capacity=100_000, epoch="e", max_bytes=10_000)
    for i in range(200):
        log.append([make_event("app.note", {"job_id": "j", "i": i, "pad": "p" * 100})])
    kept = log.read(0)
    assert frame_size(log) <= 10_000 == log.stats()["max_bytes"]
    assert log.stats()["bytes"] == frame_size(log)
    assert kept[-1].seq == 200 and log.oldest == kept[0].seq > 150  # the newest, in order
    assert [e.seq for e in kept] == list(range(log.oldest, 201))
    assert not log.covers(1) and log.covers(log.oldest - 1)
    # what is hidden past the budget is trimmed in chunks: memory stays near the budget
    assert len(log._sizes) * 170 < 10_000 * 1.2


def test_one_event_larger_than_the_budget_is_still_the_newest_kept():
    log = EventLog(capacity=100, epoch="e", max_bytes=100)
    log.append([make_event("app.note", {"job_id": "j", "pad": "p" * 500})])
    log.append([make_event("app.note", {"job_id": "j", "pad": "q" * 500})])
    assert [e.seq for e in log.read(0)] == [2]


def test_the_byte_budget_and_the_count_work_together_and_with_expire():
    log = EventLog(capacity=5, epoch="e", max_bytes=1_000_000)
    for i in range(12):
        log.append([make_event("app.note", {"job_id": "j", "i": i})])
    assert len(log) == 5 and log.stats()["bytes"] == frame_size(log)
    log.expire(before=float("inf"))
    assert len(log) == 0 and log.stats()["bytes"] == 0


def test_a_restored_log_applies_its_byte_budget():
    from control_plane.core.event_store import StoredBatch

    events = [encoded(i=i, pad="p" * 100) for i in range(50)]
    log = EventLog(capacity=1000, epoch="e", max_bytes=2000)
    log.restore(50, [StoredBatch(1, "", 0.0, events)])
    assert frame_size(log) <= 2000 and log.read(0)[-1].seq == 50
    assert log.stats()["bytes"] == frame_size(log)


# --- the idempotency cache -----------------------------------------------------------------


async def test_the_idempotency_cache_is_bounded_in_bytes_oldest_out():
    cache = IdempotencyCache(size=1_000_000, max_bytes=64 * 1024)

    async def done() -> str:
        return "ok"

    for i in range(1000):
        await cache.run(("client", f"{i:04d}" + "x" * 120), done)
    assert cache.bytes <= 64 * 1024
    assert 0 < len(cache) < 1000
    ran: list[int] = []

    async def again() -> str:
        ran.append(1)
        return "again"

    assert await cache.run(("client", "0999" + "x" * 120), again) == "ok"  # newest kept
    assert await cache.run(("client", "0000" + "x" * 120), again) == "again"  # oldest out
    assert ran == [1]


async def test_the_idempotency_cache_is_still_bounded_in_count():
    cache = IdempotencyCache(size=10)

    async def done() -> None:
        await asyncio.sleep(0)

    for i in range(25):
        await cache.run(("c", str(i)), done)
    assert len(cache) == 10
