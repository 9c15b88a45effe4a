"""A real-time control plane for long-running jobs on Ray.

    import ray, control_plane
    control_plane.start()
    job = control_plane.submit("jobs.examples:countdown", steps=50, delay=0.05)
    ray.get(job.actor.pause.remote())
    ray.get(job.result)

The public names load on first use, so that ``jobs`` and the Ray-free cores can import
``control_plane.core.protocol`` without pulling in Ray and Serve.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from control_plane.core.errors import (
        ControlPlaneError,
        InvalidTransitionError,
        JobCancelledError,
        JobError,
        JobFailedError,
        JobNotFoundError,
        NotSuspendableError,
    )
    from control_plane.handle import JobHandle, get_job, list_jobs, submit
    from control_plane.launcher import ControlPlaneInfo, start, stop
    from jobs.actor import JobOptions
    from jobs.lifecycle import JobState, JobStatus

_EXPORTS = {
    "ControlPlaneError": "control_plane.core.errors",
    "InvalidTransitionError": "control_plane.core.errors",
    "JobCancelledError": "control_plane.core.errors",
    "JobError": "control_plane.core.errors",
    "JobFailedError": "control_plane.core.errors",
    "JobNotFoundError": "control_plane.core.errors",
    "NotSuspendableError": "control_plane.core.errors",
    "JobHandle": "control_plane.handle",
    "get_job": "control_plane.handle",
    "list_jobs": "control_plane.handle",
    "submit": "control_plane.handle",
    "ControlPlaneInfo": "control_plane.launcher",
    "start": "control_plane.launcher",
    "stop": "control_plane.launcher",
    "JobOptions": "jobs.actor",
    "JobState": "jobs.lifecycle",
    "JobStatus": "jobs.lifecycle",
}

__all__ = [
    "ControlPlaneError",
    "ControlPlaneInfo",
    "InvalidTransitionError",
    "JobCancelledError",
    "JobError",
    "JobFailedError",
    "JobHandle",
    "JobNotFoundError",
    "JobOptions",
    "JobState",
    "JobStatus",
    "NotSuspendableError",
    "get_job",
    "list_jobs",
    "start",
    "stop",
    "submit",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'control_plane' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
