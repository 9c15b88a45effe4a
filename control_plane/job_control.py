"""The seed's ``JobController``: real-time job control from async code anywhere on the cluster.

A facade over the controller actor. ``pause_job`` returns once the job is held at a
checkpoint (state ``paused``), or with state ``pausing`` when it has not reached one within
the job's ``pause_timeout``.
"""

from __future__ import annotations

from typing import Any

from control_plane.actors import runtime
from jobs.lifecycle import JobStatus


class JobController:
    """Real-time job control."""

    def __init__(self, controller: Any = None) -> None:
        self._controller = controller

    def _actor(self) -> Any:
        if self._controller is None:
            self._controller = runtime.controller()
        return self._controller

    async def pause_job(self, job_id: str) -> JobStatus:
        status: JobStatus = await self._actor().pause_job.remote(job_id)
        return status

    async def resume_job(self, job_id: str) -> JobStatus:
        status: JobStatus = await self._actor().resume_job.remote(job_id)
        return status

    async def cancel_job(self, job_id: str) -> JobStatus:
        status: JobStatus = await self._actor().cancel_job.remote(job_id)
        return status

    async def suspend_job(self, job_id: str) -> JobStatus:
        """Stop the job at its next checkpoint and end its actor (its resources are freed);
        ``resume_job`` starts it again, maybe on another node, from its last ``ctx.save``.
        A job that never saved raises :class:`~control_plane.core.errors.NotSuspendableError`."""
        status: JobStatus = await self._actor().suspend_job.remote(job_id)
        return status

    async def get_status(self, job_id: str) -> JobStatus:
        status: JobStatus = await self._actor().get_status.remote(job_id)
        return status

    async def list_jobs(self) -> list[JobStatus]:
        statuses: list[JobStatus] = await self._actor().list_jobs.remote()
        return statuses
