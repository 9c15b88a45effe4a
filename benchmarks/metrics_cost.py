"""What the control plane's metrics cost: the ingest and the end-to-end figures with the
``control_plane_*`` metrics on, beside the same figures with them off, in one run.

Off and on alternate (off, on, on, off, ...: so that the load of others on the machine,
and any warming up, falls on both alike), each the median of its rounds: ingest is events/s
into the in-memory hub from four jobs flat out (the first ``ingest`` row's set-up), end to
end is events/s one job → one socket unpaced (the ``end to end, unpaced`` row's). The
switch is each process's own (``set_metrics`` on the hub, the controller and the gateway
replica), so nothing restarts. With quick sizes, on a machine that others share, a round
varies by more than the 5 % looked for: read the full run's rows.
"""

from __future__ import annotations

import asyncio
import statistics

from ray import serve

from benchmarks import events
from benchmarks.harness import Bench, Row, note
from control_plane.actors import runtime
from control_plane.gateway.app import DEPLOYMENT_NAME

ROUNDS_QUICK = 1
ROUNDS_FULL = 3


async def set_metrics(on: bool) -> None:
    gateway = serve.get_deployment_handle(DEPLOYMENT_NAME, app_name=runtime.SERVE_APP_NAME)
    await asyncio.gather(
        runtime.hub().set_metrics.remote(on),
        runtime.controller().set_metrics.remote(on),
        gateway.set_metrics.remote(on),
    )


async def metrics_cost(bench: Bench, sizes: events.EventSizes, quick: bool) -> list[Row]:
    rounds = ROUNDS_QUICK if quick else ROUNDS_FULL
    # Quick runs (CI) halve the sizes: the scenario must end within the quick time limit.
    per_job = sizes.ingest_per_job // 2 if quick else sizes.ingest_per_job
    burst = sizes.unpaced // 2 if quick else sizes.unpaced
    ingest: dict[bool, list[float]] = {False: [], True: []}
    wire: dict[bool, list[float]] = {False: [], True: []}
    hub = runtime.hub()
    try:
        for r in range(rounds):
            # off, on, on, off, ...: neither side always goes first
            for on in (False, True) if r % 2 == 0 else (True, False):
                await set_metrics(on)
                await hub.set_durable.remote(False)
                try:
                    ingest[on].append(await events._jobs_rate(bench, per_job))
                finally:
                    await hub.set_durable.remote(True)
                wire[on].append(await events.unpaced_ours(bench, burst))
    finally:
        await set_metrics(True)
    for what, figures in (("ingest", ingest), ("end to end", wire)):
        for on in (False, True):
            line = ", ".join(f"{x:,.0f}" for x in figures[on])
            note(f"{what}, metrics {'on' if on else 'off'}: {line} events/s")
    median = f"median of {rounds}, off and on alternating"
    return [
        Row(
            f"ingest with metrics on: events/s into the hub from {events.LOAD_JOBS} jobs "
            f"({median})",
            statistics.median(ingest[True]),
            "events/s",
            "the same hub and jobs with metrics off (the plain row), same run",
            statistics.median(ingest[False]),
        ),
        Row(
            f"end to end with metrics on: events/s one job → one socket, unpaced ({median})",
            statistics.median(wire[True]),
            "events/s",
            "the same job and socket with metrics off (the plain row), same run",
            statistics.median(wire[False]),
        ),
    ]
