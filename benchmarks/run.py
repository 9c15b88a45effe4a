"""Run every benchmark beside the baseline it is compared with, in one run.

    python benchmarks/run.py [--quick] [--json FILE] [--only SCENARIO ...]

Rows are ``{"name", "value", "unit", "baseline", "baseline_value", "ratio"}``: our figure,
the baseline's description and figure (measured in the same run, on the same Ray), and

    ratio > 1 means we do better than the baseline:
    ratio = value / baseline_value   for throughputs and counts (higher is better),
    ratio = baseline_value / value   for times and memory (lower is better).

Scenarios (row names start with the word): ``ingest`` (events/s into the hub from 4 jobs,
with the SQLite log and without it, and the log's bytes per event), ``ingest, sharded``
(the same publishers into 1 hub shard and into 2, and the hub's CPU per event),
``recovery`` (a hub restart with 1,000,000 events in its log, against one with an empty log),
``end to end`` (one job to one socket: sustained events/s and latency at half of it, and
events/s unpaced against a bare uvicorn endpoint and a Serve-proxied one), ``metrics``
(ingest and end to end with the ``control_plane_*`` metrics on, against off),
``fan-out`` (many sockets on one job: latency, gateway memory per socket; and 10,000
sockets at 1 event/s each, the clients in processes of their own), ``pause``
(socket command to ``job.paused``, idle and under load, against stopping a Ray Job),
``push vs poll`` (a state change reaching a watcher, against polling Ray Jobs' status) and
``submit`` (submit to ``job.started`` from the warm pool and cold, jobs/s, idle jobs at
once, memory per job actor).

One ``address="local"`` Ray with the dashboard (Ray Jobs needs it) runs the control plane
and a trivial Serve WebSocket app for the baselines; everything is stopped at the end.
``--quick`` (what CI runs, to see that it works) takes under two and a half minutes on 2
CPUs; a full run takes about twenty-five, writes ``benchmarks/results/<date>.json`` and
rewrites the table between the bench markers in README.md. A failed scenario leaves a
FAILED row naming its error, the others run on, and the exit code is 1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Awaitable, Callable
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

from benchmarks import control, events, metrics_cost, recovery, report, shards  # noqa: E402
from benchmarks.harness import Bench, Row, failed_row, other_ray_users, pool_off  # noqa: E402

SCENARIOS = (
    "ingest",
    "ingest, sharded",
    "recovery",
    "end to end",
    "end to end, unpaced",
    "metrics",
    "fan-out",
    "fan-out at scale",
    "pause",
    "push vs poll",
    "submit",
)
MIN_FREE_MEMORY = 0.08  # of the total: below it the run stops (a runaway must not take the box)


class Run:
    """The scenarios in order, each under a time limit; a failure becomes a row."""

    def __init__(self, bench: Bench, quick: bool, only: list[str] | None = None) -> None:
        self.bench = bench
        self.quick = quick
        self.only = only
        self.event_sizes = events.QUICK if quick else events.FULL
        self.control_sizes = control.QUICK if quick else control.FULL
        self.limit = 120.0 if quick else 900.0
        self.rows: list[Row] = []
        self.failed = False
        self.ingest_rate: float | None = None

    async def scenario(self, name: str, make: Callable[[], Awaitable[list[Row]]]) -> None:
        if self.only is not None and name not in self.only:
            return
        print(f"== {name}", flush=True)
        t0 = time.monotonic()
        try:
            rows = await asyncio.wait_for(make(), self.limit)
        except Exception as e:
            self.failed = True
            traceback.print_exc()
            rows = [failed_row(name, e)]
        for row in rows:
            print(f"   {row.name}: {report.figure(row.value)} {row.unit}", flush=True)
        print(f"   ({time.monotonic() - t0:.0f} s)", flush=True)
        self.rows += rows

    async def ingest(self) -> list[Row]:
        rows = await events.ingest(self.bench, self.event_sizes)
        self.ingest_rate = rows[0].value
        return rows

    async def all(self) -> None:
        b, e, c = self.bench, self.event_sizes, self.control_sizes
        # Every scenario but submit runs with the warm pool off (harness.pool_off): its
        # refills would start processes in the middle of what they measure.
        async with pool_off():
            await self.scenario("ingest", self.ingest)
            await self.scenario("ingest, sharded", lambda: shards.sharded_ingest(self.quick))
            await self.scenario("recovery", lambda: recovery.recovery(e.recovery_events))
            await self.scenario("end to end", lambda: events.end_to_end(b, e))
            await self.scenario("end to end, unpaced", lambda: events.unpaced(b, e))
            await self.scenario("metrics", lambda: metrics_cost.metrics_cost(b, e, self.quick))
            await self.scenario("fan-out", lambda: events.fan_out(b, e))
            await self.scenario("fan-out at scale", lambda: events.fan_out_scale(b, e))
            await self.scenario("pause", lambda: control.pause(b, c, self.ingest_rate))
            await self.scenario("push vs poll", lambda: control.push_vs_poll(b, c))
        await self.scenario("submit", lambda: control.submit(b, c))


def guard_memory(stop: threading.Event) -> None:
    """Interrupt the run if the machine runs out of memory (the event path has no bound)."""
    while not stop.wait(0.5):
        memory = psutil.virtual_memory()
        if memory.available < MIN_FREE_MEMORY * memory.total:
            print(
                f"!! only {memory.available / 2**30:.1f} GiB of memory left: stopping the run",
                flush=True,
            )
            os.kill(os.getpid(), signal.SIGINT)
            return


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, under three minutes")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the rows here")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=SCENARIOS,
        metavar="SCENARIO",
        help="run only these scenarios (results are not written to results/ or README.md); "
        f"one of: {', '.join(repr(s) for s in SCENARIOS)}",
    )
    args = parser.parse_args(argv)

    others = other_ray_users()
    if others:
        print("note: other Ray or pytest processes run; their load skews the figures:")
        for line in others[:5]:
            print(f"   {line}")
    started = time.monotonic()
    stop_guard = threading.Event()
    threading.Thread(target=guard_memory, args=(stop_guard,), daemon=True).start()
    run: Run | None = None
    try:
        bench = Bench.start()
        try:
            run = Run(bench, args.quick, args.only)
            asyncio.run(run.all())
        finally:
            bench.stop()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        if run is None:
            return 130
        run.failed = True
        run.rows.append(failed_row("run", RuntimeError("interrupted")))
    except Exception as e:
        traceback.print_exc()
        if run is None:
            print(f"the bench did not start: {type(e).__name__}: {e}", file=sys.stderr)
            return 2
        run.failed = True
        run.rows.append(failed_row("run", e))
    finally:
        stop_guard.set()
    assert run is not None
    elapsed = time.monotonic() - started

    print()
    print(report.table(run.rows))
    print(f"\n{len(run.rows)} rows in {elapsed:.0f} s; ratio > 1: better than the baseline")
    if args.json:
        report.write_json(run.rows, args.json)
        print(f"wrote {args.json}")
    if not args.quick and not args.only:
        path = report.results_path(ROOT)
        report.write_json(run.rows, path)
        print(f"wrote {path.relative_to(ROOT)}")
        body = report.markdown(run.rows, date.today().isoformat(), elapsed)
        if report.update_readme(ROOT / "README.md", body):
            print("updated the table in README.md")
        else:
            print(
                f"note: README.md has no {report.README_START} … {report.README_END} "
                "markers; its table was not updated"
            )
    return 1 if run.failed else 0


if __name__ == "__main__":
    sys.exit(main())
