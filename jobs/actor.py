"""The job actor: runs one job body and answers control calls while it runs.

``run`` executes the body on the actor's default event loop (a plain ``def`` body in a
worker thread). ``pause``, ``resume``, ``cancel`` and ``status`` live in the ``control``
concurrency group, which Ray runs on its own thread and event loop, so they answer even
while the body holds its loop. A body that never reaches a checkpoint is killed when the
cancel grace period runs out and reported ``job.cancelled`` with ``forced: true``.

The controller calls :meth:`JobActor.execute`, which runs the body and hands its outcome to
the controller's store before it returns (``jobs/persistence.py``), so that a result
outlives both this actor and a controller that died meanwhile. ``suspend`` stops the body
at its next checkpoint for a new actor to resume from its last ``ctx.save``.

The controller's warm pool (``control_plane/core/worker_pool.py``) makes job actors with no
job ahead of time; :meth:`JobActor.adopt` hands one its job. ``execute`` and the control
calls wait for it (``_held``), so the controller sends ``adopt`` and ``execute`` together
and a submit returns without waiting for either.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import itertools
import logging
import threading
import traceback
import uuid
from collections.abc import Callable
from typing import Any

import ray
from pydantic import BaseModel, Field
from ray import cloudpickle

from control_plane.core import priority
from control_plane.core.emitter import EventEmitter, settle_refs
from control_plane.core.encoding import Encoded
from control_plane.core.errors import JobCancelledError, JobError, JobFailedError, PublishError
from control_plane.core.hub_log import TARGET_CHANNEL
from control_plane.core.lanes import publish_lane
from control_plane.core.limits import DEFAULT_MAX_EVENT_BYTES
from jobs.context import (
    CancelRequested,
    JobContext,
    JobControl,
    SuspendRequested,
    describe_error,
    result_preview,
)
from jobs.lifecycle import JobState, JobStatus, Trigger
from jobs.persistence import StoreCheckpointer, hand_over

logger = logging.getLogger(__name__)

CONTROL_GROUP = "control"
# Events per hub call at most. A batch must stay under Ray's 100 KiB limit for arguments
# passed inline with the call: a larger one goes through the object store, which cut ingest
# by about half when frames grew by their top-level copies (500 progress events pickle to
# 116 KB, 300 to about 70 KB, with room for a short message each).
PUBLISH_BATCH = 300
PUBLISHES_IN_FLIGHT = 4  # hub calls a job keeps going at once (the hub restores their order)
FINAL_FLUSH_TIMEOUT = 120.0  # seconds a finished job waits for its events to be acknowledged
ADOPT_TIMEOUT = 300.0  # seconds a pooled worker's calls wait for its job (then they fail)


class JobOptions(BaseModel):
    """Per-job settings; pass ``job_options=JobOptions(...)`` (or a dict) to ``submit``."""

    pause_timeout: float = Field(2.0, ge=0, description="how long pause() waits for a checkpoint")
    cancel_grace: float = Field(5.0, ge=0, description="how long cancel() waits before a kill")
    num_cpus: float = Field(0.0, ge=0, description="CPUs the job actor reserves")
    resources: dict[str, float] = Field(default_factory=dict)
    runtime_env: dict[str, Any] | None = None
    emit_interval: float = Field(
        0.005,
        gt=0,
        description="the longest events wait behind the job's publishes in flight before a "
        "further publish carries them (an event goes at once when none is in flight)",
    )
    max_restarts: int = Field(
        3, ge=0, description="new actors for a job whose actor died (worker crash, node loss)"
    )
    body_nice: int | None = Field(
        priority.BODY_NICE,
        ge=-20,
        le=19,
        description="the nice value of the thread that runs the body and of the threads it "
        "starts (Linux; only ever raised: a value below the job actor's own is not applied), "
        "so that the control plane runs ahead of a body that fills the CPUs; None leaves it",
    )
    max_event_bytes: int = Field(
        DEFAULT_MAX_EVENT_BYTES,
        ge=1,
        description="an event larger than this raises EventTooLargeError where it is made "
        "(the hub refuses those over its own --max-event-bytes)",
    )


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
    """One job's actor. Made with the job (``JobActor(job_id, target, ...)``, the cold
    path), or made with none ahead of it by the controller's warm pool and handed its job
    by :meth:`adopt`. Either way it runs one job, once: it is never handed another."""

    _emitter: EventEmitter[Encoded]

    def __init__(self, *job: Any) -> None:
        # Its control calls and its emitter ahead of every body; its own body goes behind
        # (``JobOptions.body_nice``; core/priority.py).
        priority.favour_process()
        self._job_control: JobControl | None = None
        self._options = JobOptions()
        self._executed = False
        self._context: JobContext | None = None
        # Set once a job is taken. The controller sends a pooled worker ``adopt`` and
        # ``execute`` together and returns its handle at once, so ``execute`` and the first
        # commands (on another thread and loop) may come before ``adopt``: they wait here.
        self._adopted = threading.Event()
        if job:
            self._take(*job)

    async def _held(self) -> None:
        """Return once this actor holds its job (at once but for a pooled worker whose
        ``adopt`` has not run yet)."""
        if not self._adopted.is_set():
            await asyncio.to_thread(self._adopted.wait, ADOPT_TIMEOUT)

    @property
    def _control(self) -> JobControl:
        if self._job_control is None:
            raise RuntimeError("this pooled job worker holds no job yet")
        return self._job_control

    async def ready(self) -> bool:
        """Answer once the process runs (the warm pool waits for this); True while the
        actor holds no job."""
        return self._job_control is None

    @ray.method(concurrency_group=CONTROL_GROUP)
    async def wait_adopted(self) -> None:
        """Return once a job is handed to this actor: the warm pool keeps one such call on
        each idle worker, which fails, telling it, when the worker dies idle."""
        while not self._adopted.is_set():
            await asyncio.to_thread(self._adopted.wait, ADOPT_TIMEOUT)

    @ray.method(concurrency_group=CONTROL_GROUP)
    async def holds_job(self) -> bool:
        """Whether a job was handed to this actor (a restarted controller asks a pooled one)."""
        return self._job_control is not None

    async def adopt(self, *job: Any) -> None:
        """Take a job (a pooled worker): the arguments the constructor takes on the cold
        path. An actor takes one job in its life; a second is refused."""
        self._take(*job)

    def _take(
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
        restored: bytes | None = None,
    ) -> None:
        if self._job_control is not None:
            raise RuntimeError(
                f"this job actor runs job {self._job_control.job_id}: it takes no other"
            )
        self._target = target
        self._args = args
        self._kwargs = kwargs
        self._options = options
        self._controller = controller
        # JobControl encodes its events, so a batch goes to the hub as it is. Several are in
        # flight; the hub puts them back in order by their numbers, and appends a number it
        # has once (Ray sends the calls in flight again to a restarted hub). A publish that
        # fails fails the emitter, and the body at its next event (settle_refs).
        numbers = itertools.count()
        publisher = f"{job_id}-{uuid.uuid4().hex[:8]}"
        self._emitter = EventEmitter(
            lambda batch: publish_lane(hub, batch).remote(
                batch, TARGET_CHANNEL, publisher, next(numbers)
            ),
            settle_refs,
            interval=options.emit_interval,
            max_batch=PUBLISH_BATCH,
            max_in_flight=PUBLISHES_IN_FLIGHT,
        )
        control = JobControl(
            job_id,
            name,
            owner,
            created_at,
            self._emitter.emit,
            self._emitter.wait_for_room,
            max_event_bytes=options.max_event_bytes,
        )
        # A run that continues an earlier one gets the state it saved last (pickled by the
        # controller's store); saving goes through the controller into that store.
        if restored is not None:
            control.restored = cloudpickle.loads(restored)
            control.has_saved = True
        control.checkpointer = StoreCheckpointer(job_id, controller)
        self._job_control = control
        self._adopted.set()

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
                value = await asyncio.to_thread(self._run_blocking, fn, ctx)
            else:  # on this loop's thread, which only the body and its wrapping use
                priority.yield_thread(self._options.body_nice)
                value = await fn(ctx, *self._args, **self._kwargs)
        except CancelRequested:
            await self._finish(Trigger.STOPPED, forced=False)
            raise JobCancelledError(job_id, forced=False) from None
        except Exception as e:
            error = describe_error(e)
            if control.state is JobState.CANCELLED:
                with contextlib.suppress(PublishError):  # the cancel is what ended it
                    await self._wrap_up()
                raise JobCancelledError(job_id, forced=control.forced) from None
            trace = traceback.format_exc()
            # the page folds it under the error; the tail says where it was raised
            await self._finish(Trigger.FAIL, error=error, cause=e, traceback=trace[-8000:])
            raise JobFailedError(job_id, error, trace) from e
        if control.state is JobState.CANCELLED:  # killed meanwhile; the result is void
            raise JobCancelledError(job_id, forced=control.forced)
        await self._finish(Trigger.COMPLETE, result=result_preview(value))
        return value

    def _run_blocking(self, fn: Callable[..., Any], ctx: JobContext) -> Any:
        """A plain ``def`` body, on a worker thread at the job's ``body_nice``."""
        priority.yield_thread(self._options.body_nice)
        return fn(ctx, *self._args, **self._kwargs)

    async def _finish(
        self, trigger: Trigger, cause: BaseException | None = None, **data: Any
    ) -> None:
        """Emit the final event and wrap up once the hub acknowledged every event (a hub
        that restarts meanwhile gets them again). When the job's events could not be
        published (the hub's event log refused them), it fails with that reason, whatever
        the body did: the final event, refused too, must not hide why."""
        unacknowledged = False
        with contextlib.suppress(PublishError):  # the emitter's failure, raised below
            self._control.finish(trigger, **data)
        try:
            await asyncio.to_thread(self._emitter.flush, FINAL_FLUSH_TIMEOUT)
        except PublishError:
            pass
        except TimeoutError:
            unacknowledged = True
        with contextlib.suppress(PublishError, TimeoutError):
            await self._wrap_up()
        failure = self._emitter.failure
        if failure is None and not unacknowledged:
            return
        if failure is not None:
            reason = f"its events could not be published: {failure.message}"
        else:
            reason = (
                f"the event hub did not acknowledge its last events in {FINAL_FLUSH_TIMEOUT:g} s"
            )
        raise JobFailedError(self._control.job_id, reason) from (cause or failure)

    async def execute(self) -> Any:
        """What the controller calls: :meth:`run`, then hand its outcome to the controller,
        which keeps it in its store, before returning. A job that ends while the controller
        is down (Ray restarts it) so loses nothing: the hand-over waits for it."""
        await self._held()
        control = self._control
        if self._executed:
            raise RuntimeError(f"job {control.job_id} has run in this actor: it runs once")
        self._executed = True
        try:
            value = await self.run()
        except SuspendRequested:
            control.park()
            with contextlib.suppress(PublishError):  # the store has what it resumes from
                await self._wrap_up()
            await self._hand_over("suspended", None)
            return None
        except JobError as e:
            await self._hand_over("error", e)
            raise
        await self._hand_over("value", value)
        return value

    async def _hand_over(self, kind: str, payload: Any) -> None:
        control = self._control
        try:
            await hand_over(self._controller, control.job_id, kind, payload, control.status())
        finally:
            control.end()

    @ray.method(concurrency_group=CONTROL_GROUP)
    async def wait_finished(self) -> JobState:
        """Return once the run is over and its outcome handed on (a controller that Ray
        restarted watches its jobs' actors with this: the call fails when the actor dies)."""
        await self._held()
        control = self._control
        await control.wait_for(lambda: control.ended)
        return control.state

    @ray.method(concurrency_group=CONTROL_GROUP)
    async def suspend(self) -> JobStatus:
        """Stop the job at its next checkpoint for a later resume from its last save; return
        once it stopped, or its status when no checkpoint came within ``pause_timeout``."""
        await self._held()
        control = self._control
        control.request_suspend()
        await control.wait_for(
            lambda: control.state is JobState.SUSPENDED or control.state.terminal,
            self._options.pause_timeout,
        )
        return control.status()

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
        await self._held()
        return self._control.status()

    @ray.method(concurrency_group=CONTROL_GROUP)
    async def pause(self) -> JobStatus:
        """Hold the job at its next checkpoint; return once held, or ``pausing`` on timeout."""
        await self._held()
        control = self._control
        control.pause()
        await control.wait_for(
            lambda: control.state is not JobState.PAUSING, self._options.pause_timeout
        )
        return control.status()

    @ray.method(concurrency_group=CONTROL_GROUP)
    async def resume(self) -> JobStatus:
        await self._held()
        self._control.resume()
        return self._control.status()

    @ray.method(concurrency_group=CONTROL_GROUP)
    async def cancel(self) -> JobStatus:
        """Stop at the next checkpoint; kill the actor if none comes within the grace period."""
        await self._held()
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
        await self._held()
        return self._control.job_id


JobActorRemote: Any = ray.remote(concurrency_groups={CONTROL_GROUP: 64})(JobActor)  # type: ignore[call-overload]
