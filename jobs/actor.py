"""The job actor: runs one job body and answers control calls while it runs.

``run`` executes the body on the actor's default event loop (a plain ``def`` body in a
worker thread). ``pause``, ``resume``, ``cancel`` and ``status`` live in the ``control``
concurrency group, which Ray runs on its own thread and event loop, so they answer even
while the body holds its loop. A body that never reaches a checkpoint is killed when the
cancel grace period runs out and reported ``job.cancelled`` with ``forced: true``.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import itertools
import logging
import traceback
import uuid
from collections.abc import Callable
from typing import Any

import ray
from pydantic import BaseModel, Field

from control_plane.core.emitter import EventEmitter, wait_refs
from control_plane.core.encoding import Encoded
from control_plane.core.errors import JobCancelledError, JobFailedError
from control_plane.core.hub_log import TARGET_CHANNEL
from jobs.context import (
    CancelRequested,
    JobContext,
    JobControl,
    describe_error,
    result_preview,
)
from jobs.lifecycle import JobState, JobStatus, Trigger

logger = logging.getLogger(__name__)

CONTROL_GROUP = "control"
# Events per hub call at most. A batch must stay under Ray's 100 KiB limit for arguments
# passed inline with the call: a larger one goes through the object store, which cut ingest
# by about half when frames grew by their top-level copies (500 progress events pickle to
# 116 KB, 300 to about 70 KB, with room for a short message each).
PUBLISH_BATCH = 300
PUBLISHES_IN_FLIGHT = 4  # hub calls a job keeps going at once (the hub restores their order)


class JobOptions(BaseModel):
    """Per-job settings; pass ``job_options=JobOptions(...)`` (or a dict) to ``submit``."""

    pause_timeout: float = Field(2.0, ge=0, description="how long pause() waits for a checkpoint")
    cancel_grace: float = Field(5.0, ge=0, description="how long cancel() waits before a kill")
    num_cpus: float = Field(0.0, ge=0, description="CPUs the job actor reserves")
    resources: dict[str, float] = Field(default_factory=dict)
    runtime_env: dict[str, Any] | None = None
    emit_interval: float = Field(0.005, gt=0, description="seconds the emitter batches events")


def resolve_target(target: str | Callable[..., Any]) -> Callable[..., Any]:
    """``"package.module:function"`` → the function; a callable is returned as it is."""
    if callable(target):
        return target
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"a job target is 'module:function', got {target!r}")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{target!r} is not callable")
    return obj


def target_name(target: str | Callable[..., Any]) -> str:
    if isinstance(target, str):
        return target.partition(":")[2] or target
    return getattr(target, "__name__", type(target).__name__)


class JobActor:
    def __init__(
        self,
        job_id: str,
        target: str | Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        name: str,
        owner: str,
        created_at: str,
        options: JobOptions,
        hub: Any,
        controller: Any,
    ) -> None:
        self._target = target
        self._args = args
        self._kwargs = kwargs
        self._options = options
        self._controller = controller
        # JobControl encodes its events, so a batch goes to the hub as it is. Several are in
        # flight; the hub puts them back in order by their numbers.
        numbers = itertools.count()
        publisher = f"{job_id}-{uuid.uuid4().hex[:8]}"
        self._emitter: EventEmitter[Encoded] = EventEmitter(
            lambda batch: hub.publish_encoded.remote(
                batch, TARGET_CHANNEL, publisher, next(numbers)
            ),
            wait_refs,
            interval=options.emit_interval,
            max_batch=PUBLISH_BATCH,
            max_in_flight=PUBLISHES_IN_FLIGHT,
        )
        self._control = JobControl(
            job_id, name, owner, created_at, self._emitter.emit, self._emitter.wait_for_room
        )
        self._context: JobContext | None = None

    async def run(self) -> Any:
        """Run the body to its end; return its value or raise a typed job error."""
        control = self._control
        job_id = control.job_id
        try:
            fn = resolve_target(self._target)
            blocking = not (
                inspect.iscoroutinefunction(fn)
                or inspect.iscoroutinefunction(
                    getattr(fn, "__call__", None)  # noqa: B004 - async callables
                )
            )
            ctx = self._context = JobContext(control, blocking=blocking)
            control.start()
            if blocking:
                value = await asyncio.to_thread(fn, ctx, *self._args, **self._kwargs)
            else:
                value = await fn(ctx, *self._args, **self._kwargs)
        except CancelRequested:
            control.finish(Trigger.STOPPED, forced=False)
            await self._wrap_up()
            raise JobCancelledError(job_id, forced=False) from None
        except Exception as e:
            error = describe_error(e)
            if control.state is JobState.CANCELLED:
                await self._wrap_up()
                raise JobCancelledError(job_id, forced=control.forced) from None
            control.finish(Trigger.FAIL, error=error)
            await self._wrap_up()
            raise JobFailedError(job_id, error, traceback.format_exc()) from e
        if control.state is JobState.CANCELLED:  # killed meanwhile; the result is void
            raise JobCancelledError(job_id, forced=control.forced)
        control.finish(Trigger.COMPLETE, result=result_preview(value))
        await self._wrap_up()
        return value

    async def _wrap_up(self) -> None:
        self._cancel_tasks()
        await asyncio.to_thread(self._emitter.flush)

    def _cancel_tasks(self) -> None:
        if self._context is None:
            return
        for ref in self._context.tracked_tasks():
            try:
                ray.cancel(ref, force=True)
            except Exception:  # already finished or gone
                logger.debug("could not cancel task %s", ref, exc_info=True)

    @ray.method(concurrency_group=CONTROL_GROUP)
    async def status(self) -> JobStatus:
        return self._control.status()

    @ray.method(concurrency_group=CONTROL_GROUP)
    async def pause(self) -> JobStatus:
        """Hold the job at its next checkpoint; return once held, or ``pausing`` on timeout."""
        control = self._control
        control.pause()
        await control.wait_for(
            lambda: control.state is not JobState.PAUSING, self._options.pause_timeout
        )
        return control.status()

    @ray.method(concurrency_group=CONTROL_GROUP)
    async def resume(self) -> JobStatus:
        self._control.resume()
        return self._control.status()

    @ray.method(concurrency_group=CONTROL_GROUP)
    async def cancel(self) -> JobStatus:
        """Stop at the next checkpoint; kill the actor if none comes within the grace period."""
        control = self._control
        control.request_cancel()
        ended = await control.wait_for(lambda: control.state.terminal, self._options.cancel_grace)
        if not ended and control.finish(Trigger.STOPPED, forced=True):
            logger.warning("job %s reached no checkpoint; killing it", control.job_id)
            self._cancel_tasks()
            await asyncio.to_thread(self._emitter.flush)
            # The controller kills this actor after a moment, once this reply is out.
            self._controller.reap_job.remote(control.job_id, True)
        return control.status()

    @ray.method(concurrency_group=CONTROL_GROUP)
    async def ping(self) -> str:
        return self._control.job_id


JobActorRemote: Any = ray.remote(concurrency_groups={CONTROL_GROUP: 64})(JobActor)  # type: ignore[call-overload]
