"""The goals the rows are held to (issue 13, the second round), matched by row name.

A goal is text for the README and a check of the row's figure; a row no goal names has none.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from benchmarks.harness import Row


@dataclass(frozen=True)
class Goal:
    words: tuple[str, ...]  # all in the row's name
    text: str
    met: Callable[[Row], bool]


def _at_most(limit: float) -> Callable[[Row], bool]:
    return lambda row: row.value is not None and math.isfinite(row.value) and row.value <= limit


def _at_least(limit: float) -> Callable[[Row], bool]:
    return lambda row: row.value is not None and row.value >= limit


def _better_than_baseline(row: Row) -> bool:
    return row.ratio is not None and row.ratio > 1.0


GOALS = (
    Goal(("pause: round trip", "p50", "load"), "≤ 20 ms", _at_most(20.0)),
    Goal(("pause: round trip", "p99", "load"), "≤ 50 ms", _at_most(50.0)),
    Goal(("submit", "job.started", "p50", "warm"), "≤ 150 ms", _at_most(150.0)),
    Goal(("end to end", "latency p50", "half the sustained rate"), "≤ 5 ms", _at_most(5.0)),
    Goal(("fan-out", "p99", "1 event/s"), "≤ 250 ms at 10,000 sockets", _at_most(250.0)),
    Goal(("fan-out", "memory per socket", "1 event/s"), "≤ 30 KB", _at_most(30.0)),
    Goal(("ingest", "2 hub shards"), "above 1 shard", _better_than_baseline),
)


def goal_of(row: Row) -> Goal | None:
    for goal in GOALS:
        if all(word in row.name for word in goal.words):
            return goal
    return None


def goal_text(row: Row) -> str:
    """``≤ 20 ms ✓`` (met), ``≤ 20 ms ✗`` (missed), or empty (no goal)."""
    goal = goal_of(row)
    if goal is None:
        return ""
    return f"{goal.text} {'✓' if goal.met(row) else '✗'}"
