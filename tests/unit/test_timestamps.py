"""``utc_now_iso``: formatted once a millisecond, in the contract's format."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from control_plane.core import protocol
from control_plane.core.protocol import utc_now_iso

ISO_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def with_datetime(ms: int) -> str:
    """The format as ``datetime`` writes it (the implementation before the cache)."""
    moment = EPOCH + timedelta(milliseconds=ms)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@pytest.mark.parametrize(
    "ms",
    [
        0,
        999,
        1_768_473_000_123,  # 2026-01-15T10:30:00.123Z
        1_767_225_599_999,  # the last millisecond of 2025
        1_767_225_600_000,  # the first of 2026
        1_772_323_200_000,  # 2026-03-01, after February
        4_102_444_799_001,  # 2099-12-31T23:59:59.001Z
    ],
)
def test_a_millisecond_is_written_as_datetime_writes_it(ms):
    assert protocol._format_ms(ms) == with_datetime(ms)
    assert protocol._format_ms(ms + 1) == with_datetime(ms + 1)  # same second, cached
    assert protocol._format_ms(ms) == with_datetime(ms)


def test_now_is_iso_utc_with_milliseconds_and_between_the_clock_before_and_after():
    before = with_datetime(int(datetime.now(UTC).timestamp() * 1000) - 1)
    now = utc_now_iso()
    after = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    assert ISO_UTC.match(now)
    assert before <= now <= after  # ISO strings of one format sort as times do


def test_the_clock_moves_on():
    first = utc_now_iso()
    deadline = datetime.now(UTC) + timedelta(seconds=1)
    while (now := utc_now_iso()) == first:
        assert datetime.now(UTC) < deadline, "the timestamp did not change"
    assert now > first
