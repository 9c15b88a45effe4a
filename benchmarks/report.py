"""The rows, written out: a terminal table, the JSON file, and the README's table."""

from __future__ import annotations

import json
import math
import os
import platform
from collections.abc import Sequence
from datetime import date
from pathlib import Path

from benchmarks.goals import goal_text
from benchmarks.harness import Row

README_START = "<!-- bench:start -->"
README_END = "<!-- bench:end -->"


def figure(x: float | None) -> str:
    if x is None or math.isnan(x):
        return "-"
    if math.isinf(x):
        return "∞"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    if abs(x) >= 100:
        return f"{x:.0f}"
    return f"{x:.3g}" if abs(x) < 10 else f"{x:.1f}"


def ratio_text(row: Row) -> str:
    r = row.ratio
    return "-" if r is None else f"{r:.2f}"


def table(rows: Sequence[Row]) -> str:
    """Aligned text: each row's name, its figure, the baseline's and the ratio; the
    baseline's description on the line below."""
    width = max([len(r.name) for r in rows] + [20])
    head = f"{'benchmark':<{width}}  {'value':>12} {'':<8} {'baseline':>12}  {'ratio':>6}"
    lines = [head, "-" * len(head)]
    for row in rows:
        lines.append(
            f"{row.name:<{width}}  {figure(row.value):>12} {row.unit:<8} "
            f"{figure(row.baseline_value):>12}  {ratio_text(row):>6}  {goal_text(row)}"
        )
        if row.baseline:
            lines.append(f"{'':<4}baseline: {row.baseline}")
    return "\n".join(lines)


def markdown(rows: Sequence[Row], when: str, elapsed: float) -> str:
    lines = [
        f"Measured {when} on {os.cpu_count()} CPUs ({platform.machine()}, Python "
        f"{platform.python_version()}) by `python benchmarks/run.py` in {elapsed / 60:.0f} min. "
        "Ratio > 1 means better than the baseline (throughputs: ours / baseline; times and "
        "memory: baseline / ours). A goal is the second round's (issue 13): ✓ met, ✗ missed.",
        "",
        "| benchmark | ours | baseline | baseline's figure | ratio | goal |",
        "|---|---:|---|---:|---:|---|",
    ]
    for row in rows:
        value = f"{figure(row.value)} {row.unit}".strip()
        base = f"{figure(row.baseline_value)} {row.unit}".strip()
        lines.append(
            f"| {row.name} | {value} | {row.baseline} | {base} | {ratio_text(row)} "
            f"| {goal_text(row)} |"
        )
    return "\n".join(lines)


def write_json(rows: Sequence[Row], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([r.to_json() for r in rows], indent=2, ensure_ascii=False) + "\n")


def results_path(root: Path, today: date | None = None) -> Path:
    return root / "benchmarks" / "results" / f"{(today or date.today()).isoformat()}.json"


def update_readme(readme: Path, body: str) -> bool:
    """Replace what lies between the bench markers; False (and nothing written) without them."""
    text = readme.read_text() if readme.exists() else ""
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        return False
    new = text[: start + len(README_START)] + "\n" + body + "\n" + text[end:]
    readme.write_text(new)
    return True
