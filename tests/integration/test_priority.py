"""CPU priority on a real Ray (core/priority.py): the control plane's processes run at a
better nice value than the workers Ray starts (a job actor too), and a job's body at a
worse one."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import psutil
import pytest
import ray

import control_plane
from control_plane.actors import runtime
from control_plane.core import priority

pytestmark = [
    pytest.mark.ray,
    pytest.mark.skipif(not priority.supported(), reason="nice values per thread: Linux"),
]

RAY_WORKER_NICE = 15  # what Ray starts its workers at
# where the control plane's processes (and a job actor's threads but its body) are: where
# this process may lower a nice value (root, CAP_SYS_NICE), so may Ray's workers it started
CONTROL = priority.CONTROL_NICE if priority.may_lower() else RAY_WORKER_NICE


def thread_nices(pid: int) -> set[int]:
    return {os.getpriority(os.PRIO_PROCESS, int(tid)) for tid in os.listdir(f"/proc/{pid}/task")}


def ray_processes(title: str) -> list[psutil.Process]:
    """This session's Ray workers whose title starts with ``title``."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.cmdline() and proc.cmdline()[0].startswith(title):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def test_the_control_planes_processes_run_ahead_of_ray_workers(plane: Any) -> None:
    hub_pid = ray.get(runtime.hub().pid.remote())
    controllers = ray_processes("ray::Controller")
    gateways = ray_processes("ray::ServeReplica:control_plane")
    assert controllers and gateways
    for pid in [hub_pid] + [p.pid for p in controllers + gateways]:
        assert thread_nices(pid) == {CONTROL}, pid


def body_priority(ctx: Any) -> tuple[int, int]:
    """The body's own thread's nice value, and the job actor's main thread's."""
    return priority.thread_nice(), os.getpriority(os.PRIO_PROCESS, os.getpid())


async def async_body_priority(ctx: Any) -> tuple[int, int]:
    await ctx.checkpoint()
    return priority.thread_nice(), os.getpriority(os.PRIO_PROCESS, os.getpid())


@pytest.mark.parametrize("body", [body_priority, async_body_priority], ids=["def", "async"])
async def test_a_jobs_body_runs_at_its_body_nice_and_nothing_else_of_its_actor(
    plane: Any, body: Any
) -> None:
    job = await asyncio.to_thread(control_plane.submit, body)
    result = await asyncio.wait_for(asyncio.wrap_future(job.result.future()), 60)
    assert tuple(result) == (priority.BODY_NICE, CONTROL)


async def test_a_job_may_keep_the_nice_value_ray_gave_it(plane: Any) -> None:
    job = await asyncio.to_thread(
        control_plane.submit, body_priority, job_options={"body_nice": None}
    )
    body, main = await asyncio.wait_for(asyncio.wrap_future(job.result.future()), 60)
    assert (body, main) == (CONTROL, CONTROL)
