"""``benchmarks/run.py``'s choice of scenarios (no Ray: the scenarios are stand-ins)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from benchmarks import run
from benchmarks.harness import Row


def test_only_runs_the_named_scenarios_and_refuses_an_unknown_one(
    capsys: pytest.CaptureFixture[str],
) -> None:
    ran: list[str] = []

    def scenario(name: str) -> Any:
        async def make() -> list[Row]:
            ran.append(name)
            return [Row(f"{name}: x", 1.0, "ms", "b", 1.0)]

        return make

    chosen = run.Run(bench=None, quick=True, only=["pause", "submit"])  # type: ignore[arg-type]
    everything = run.Run(bench=None, quick=True)  # type: ignore[arg-type]

    async def go(r: run.Run) -> None:
        for name in ("ingest", "pause", "push vs poll", "submit"):
            await r.scenario(name, scenario(name))

    asyncio.run(go(chosen))
    assert ran == ["pause", "submit"] and [row.name for row in chosen.rows] == [
        "pause: x",
        "submit: x",
    ]
    ran.clear()
    asyncio.run(go(everything))
    assert ran == ["ingest", "pause", "push vs poll", "submit"]

    with pytest.raises(SystemExit) as refused:
        run.main(["--only", "pauses"])
    assert refused.value.code == 2
    assert "invalid choice: 'pauses'" in capsys.readouterr().err
