"""CI runs the benchmarks in --quick mode only to check that they work; figures are read by
people, never asserted here (the machines are shared and noisy). This folder sorts before
``integration``, so the benchmark's own Ray runs before the test session starts its one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
WORDS = (
    "ingest",
    "SQLite log",
    "recovery",
    "end to end",
    "fan-out",
    "pause",
    "pause breakdown",
    "poll",
    "submit",
)
KEYS = {"name", "value", "unit", "baseline", "baseline_value", "ratio"}


@pytest.mark.timeout(900)
def test_quick_benchmarks_run_every_scenario_beside_its_baseline(tmp_path: Path) -> None:
    out = tmp_path / "quick.json"
    run = subprocess.run(
        [sys.executable, "benchmarks/run.py", "--quick", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    rows = json.loads(out.read_text())
    assert rows and all(set(row) == KEYS for row in rows)
    for word in WORDS:
        assert any(word in row["name"] for row in rows), f"no {word!r} row"
    assert all(row["baseline"] for row in rows)
