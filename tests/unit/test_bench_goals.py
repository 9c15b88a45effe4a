"""The README's goal column: a row is held to the goal its name matches (no Ray)."""

from __future__ import annotations

from benchmarks.goals import goal_text
from benchmarks.harness import Row
from benchmarks.report import markdown


def row(name: str, value: float, baseline: float = 1.0, higher: bool = False) -> Row:
    return Row(name, value, "ms", "a baseline", baseline, higher_is_better=higher)


def test_a_pause_under_load_is_held_to_its_goal_and_an_idle_one_to_none() -> None:
    loaded = "pause: round trip p50, socket command → job.paused, under a 60,000 events/s load"
    assert goal_text(row(loaded, 19.0)) == "≤ 20 ms ✓"
    assert goal_text(row(loaded, 21.0)) == "≤ 20 ms ✗"
    assert goal_text(row(loaded, float("inf"))) == "≤ 20 ms ✗"
    assert goal_text(row("pause: round trip p50, socket command → job.paused, idle", 5.0)) == ""
    breakdown = "pause breakdown: one call to the hub (head), p50 under the load"
    assert goal_text(row(breakdown, 50.0)) == ""  # a part of the round trip, not held to it


def test_the_shards_row_is_met_when_it_beats_its_one_shard_baseline() -> None:
    name = "ingest: events/s into 2 hub shards from 4 jobs"
    assert goal_text(row(name, 120.0, 100.0, higher=True)).endswith("✓")
    assert goal_text(row(name, 90.0, 100.0, higher=True)).endswith("✗")


def test_the_markdown_table_has_a_goal_column() -> None:
    table = markdown(
        [row("end to end: latency p50 at 4000 events/s (half the sustained rate)", 3.0)],
        "today",
        60,
    )
    assert "| goal |" in table and "≤ 5 ms ✓ |" in table
