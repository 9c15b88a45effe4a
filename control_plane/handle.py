"""The driver-side job API: :func:`submit`, :func:`get_job`, :func:`list_jobs` and
:class:`JobHandle`. Callers never type ``.remote()`` for our actors unless they want to."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ray
from ray.actor import ActorHandle

from control_plane.actors import runtime
from jobs.actor import JobOptions
from jobs.lifecycle import JobStatus


class JobHandle:
    """A submitted job: its id, its actor, and its result as an ObjectRef."""

    def __init__(self, job_id: str, actor: ActorHandle | None) -> None:
        self.job_id = job_id
        self._actor = actor

    @property
    def actor(self) -> ActorHandle:
        """The job's Ray actor (``pause``, ``resume``, ``cancel``, ``suspend``, ``status``
        methods). A job restarted after its actor died, or resumed after a suspend, has a
        new one: ``control_plane.get_job(job_id).actor`` gives it."""
        if self._actor is None:
            raise ValueError(f"job {self.job_id} has finished; its actor is gone")
        return self._actor

    @property
    def result(self) -> ray.ObjectRef[Any]:
        """An ObjectRef of the job's return value; ``ray.get`` raises a typed error
        (:class:`~control_plane.errors.JobFailedError`, ``JobCancelledError``) otherwise."""
        ref: ray.ObjectRef[Any] = runtime.controller().result.remote(self.job_id)
        return ref

    def status(self, timeout: float = 30.0) -> JobStatus:
        ref: Any = runtime.controller().get_status.remote(self.job_id)
        status: JobStatus = ray.get(ref, timeout=timeout)
        return status

    def pause(self) -> JobStatus:
        return _call("pause_job", self.job_id)

    def resume(self) -> JobStatus:
        return _call("resume_job", self.job_id)

    def cancel(self) -> JobStatus:
        return _call("cancel_job", self.job_id)

    def suspend(self) -> JobStatus:
        """Stop at the next checkpoint and free the job's actor; :meth:`resume` starts a new
        one from the last ``ctx.save`` (``NotSuspendableError`` for a job that never saved)."""
        return _call("suspend_job", self.job_id)

    def wait(self, timeout: float | None = None) -> Any:
        """Block until the job ends; return its value or raise its typed error."""
        return ray.get(self.result, timeout=timeout)

    def __repr__(self) -> str:
        return f"JobHandle(job_id={self.job_id!r})"


def _call(method: str, job_id: str) -> JobStatus:
    status: JobStatus = ray.get(getattr(runtime.controller(), method).remote(job_id))
    return status


def submit(
    target: str | Callable[..., Any],
    *args: Any,
    job_name: str | None = None,
    job_owner: str | None = None,
    job_options: JobOptions | dict[str, Any] | None = None,
    **kwargs: Any,
) -> JobHandle:
    """Start a job: ``target`` is ``"module:function"`` or a function taking a ``JobContext``.

    Other arguments go to the job. The job belongs to the control plane: it keeps running
    after this driver exits.
    """
    options = JobOptions.model_validate(job_options) if job_options is not None else None
    job_id: str
    actor: ActorHandle
    job_id, actor = ray.get(
        runtime.controller().submit.remote(target, args, kwargs, job_name, job_owner, options)
    )
    return JobHandle(job_id, actor)


def get_job(job_id: str) -> JobHandle:
    """The handle of a job submitted by any driver on the cluster."""
    ref: Any = runtime.controller().job_actor.remote(job_id)
    actor: ActorHandle | None = ray.get(ref)
    return JobHandle(job_id, actor)


def list_jobs(states: list[str] | None = None) -> list[JobStatus]:
    statuses: list[JobStatus] = ray.get(runtime.controller().list_jobs.remote(states))
    return statuses
