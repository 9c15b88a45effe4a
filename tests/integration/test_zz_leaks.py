"""Runs last: nothing the tests started is left behind (the arq-style leak check)."""

from __future__ import annotations

import time
from typing import Any

import pytest
import ray

import control_plane
from control_plane.actors import runtime

pytestmark = pytest.mark.ray


def _job_actors() -> set[str]:
    return {
        a["name"].removeprefix(runtime.JOB_NAME_PREFIX)
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["namespace"] == runtime.NAMESPACE and a["name"].startswith(runtime.JOB_NAME_PREFIX)
    }


def test_no_finished_job_keeps_an_actor_and_cancelling_the_rest_and_the_pool_frees_them(
    plane: Any,
) -> None:
    statuses = {s.job_id: s for s in control_plane.list_jobs()}
    assert statuses, "the suite ran jobs"
    lingering = {j for j in _job_actors() if j in statuses and statuses[j].state.terminal}
    # a job that ended a moment ago may still be on its way out
    deadline = time.monotonic() + 30
    while lingering and time.monotonic() < deadline:
        time.sleep(0.1)
        lingering &= _job_actors()
    assert not lingering, f"finished jobs still hold actors: {lingering}"
    for job_id, status in statuses.items():
        if not status.state.terminal:
            control_plane.JobHandle(job_id, None).cancel()
    # the warm pool's idle workers hold no job; drained, they go too
    ray.get(runtime.controller().drain_pool.remote())
    deadline = time.monotonic() + 60
    while _job_actors() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _job_actors() == set()
    assert all(s.state.terminal for s in control_plane.list_jobs())
