"""The controller actor: creates job actors, owns their results, routes commands.

A named, detached actor, so jobs belong to the control plane and not to the driver that
submitted them. It holds the ObjectRef of every job's ``run`` call (so results outlive the
submitting driver), keeps the :class:`~control_plane.controller.JobRegistry` in step by
listening to the hub like any other reader, and publishes ``system.*`` events.
"""

from __future__ import annotations

import asyncio
import getpass
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import ray
from ray.actor import ActorHandle
from ray.exceptions import GetTimeoutError, RayActorError

from control_plane.actors import runtime
from control_plane.actors.hub import RayHub
from control_plane.core.emitter import EventEmitter, wait_refs
from control_plane.core.encoding import encode_event
from control_plane.core.errors import (
    InvalidTransitionError,
    JobCancelledError,
    JobFailedError,
    JobNotFoundError,
)
from control_plane.core.hub_log import LogEntry, ReaderFilter
from control_plane.core.protocol import (
    JOB_CHANNEL_PREFIX,
    SYSTEM_CHANNEL,
    make_event,
    status_for,
    utc_now_iso,
)
from control_plane.core.reader import HubReader, Reset
from control_plane.core.registry import IdempotencyCache, JobRecord, JobRegistry
from control_plane.core.system import AlertRules, SystemConfig, collect_cluster_metrics
from jobs.actor import JobActorRemote, JobOptions, target_name
from jobs.lifecycle import JobState, JobStatus

logger = logging.getLogger(__name__)


def death_reason(error: BaseException) -> str:
    """One line on why a job's actor died, from Ray's error (a lost node, a crash, a kill)."""
    said = [line.strip() for line in str(error).splitlines()]
    said = [line for line in said if line.startswith("The actor")]
    why = [line for line in said if "because" in line]  # "... because its node has died."
    if why or said:
        return f"job actor died: {(why or said)[0][:300]}"
    return f"job actor died: {type(error).__name__}"


STATUS_TIMEOUT = 5.0
REAP_DELAY = 0.5
SETTLE_TIMEOUT = 5.0


class Controller:
    def __init__(self, config: SystemConfig | None = None) -> None:
        self._config = config or SystemConfig()
        self._hub = runtime.hub()
        self._self: ActorHandle | None = None
        self._registry = JobRegistry()
        self._actors: dict[str, ActorHandle] = {}
        self._runs: dict[str, ray.ObjectRef[Any]] = {}
        self._options: dict[str, JobOptions] = {}
        self._rules = AlertRules(self._config)
        self._emitter: EventEmitter[dict[str, Any]] = EventEmitter(
            lambda batch: self._hub.publish_encoded.remote([encode_event(e) for e in batch]),
            wait_refs,
        )
        self._tasks: set[asyncio.Task[Any]] = set()
        self._idempotency = IdempotencyCache()
        self._done: dict[str, asyncio.Event] = {}
        # The hub sends this reader job events only, and of a burst of progress each job's
        # last one: the only one that changes what the registry keeps.
        self._feed = HubReader(
            RayHub(self._hub),
            f"controller-{uuid.uuid4().hex[:8]}",
            self._apply_entries,
            self._resync_after,
            wanted=ReaderFilter(
                prefixes=(JOB_CHANNEL_PREFIX,),
                broadcasts=False,
                clients=frozenset(),
                latest_progress=True,
            ),
            batch=10_000,
        )
        self._metrics: asyncio.Task[None] | None = None

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("controller task failed", exc_info=task.exception())

    async def start(self) -> None:
        """Start the hub feed and the metrics loop unless they run (a controller that Ray
        restarted resumes them on its first call); return once the feed has its cursor, so
        that no job submitted after this is missed."""
        if self._self is None:
            self._self = ray.get_runtime_context().current_actor
        self._feed.start()
        if self._metrics is None or self._metrics.done():
            self._metrics = asyncio.get_running_loop().create_task(self._metrics_loop())
        await self._feed.ready()

    # --- submitting ----------------------------------------------------------------------

    async def submit(
        self,
        target: str | Callable[..., Any],
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        name: str | None = None,
        owner: str | None = None,
        options: JobOptions | None = None,
    ) -> tuple[str, ActorHandle]:
        await self.start()
        options = options or JobOptions()
        job_id = uuid.uuid4().hex[:12]
        name = name or target_name(target)
        owner = owner or getpass.getuser()
        created_at = utc_now_iso()
        actor_options: dict[str, Any] = {
            "name": runtime.job_actor_name(job_id),
            "namespace": runtime.NAMESPACE,
            "lifetime": "detached",
            "num_cpus": options.num_cpus,
            "max_restarts": 0,
        }
        if options.resources:
            actor_options["resources"] = options.resources
        if options.runtime_env:
            actor_options["runtime_env"] = options.runtime_env
        actor = JobActorRemote.options(**actor_options).remote(
            job_id,
            target,
            tuple(args),
            dict(kwargs or {}),
            name,
            owner,
            created_at,
            options,
            self._hub,
            self._self,
        )
        self._registry.add(JobRecord(job_id, name, owner, created_at, updated_at=created_at))
        self._actors[job_id] = actor
        self._options[job_id] = options
        self._emitter.emit(
            make_event(
                "job.created",
                {
                    "job_id": job_id,
                    "status": status_for("job.created"),
                    "name": name,
                    "owner": owner,
                },
            ),
            True,
        )
        ref = actor.run.remote()
        self._runs[job_id] = ref
        self._spawn(self._watch(job_id, actor, ref))
        return job_id, actor

    async def _watch(self, job_id: str, actor: ActorHandle, ref: ray.ObjectRef[Any]) -> None:
        """Wait for the run to end, report a death no one saw, let the registry catch up with
        the job's last events, then free the job's actor."""
        try:
            await ref
        except RayActorError as e:
            record = self._registry.get(job_id)
            if record is not None and not await self._settled(job_id, 1.0):
                reason = death_reason(e)
                self._emitter.emit(
                    make_event(
                        "job.failed",
                        {"job_id": job_id, "status": status_for("job.failed"), "error": reason},
                    ),
                    True,
                )
        except Exception:
            pass  # a typed job error: the actor already reported it
        finally:
            await self._settled(job_id, SETTLE_TIMEOUT)
            self._actors.pop(job_id, None)
            try:
                ray.kill(actor, no_restart=True)
            except Exception:
                logger.debug("job actor %s already gone", job_id, exc_info=True)
            self._done.setdefault(job_id, asyncio.Event()).set()

    async def _settled(self, job_id: str, timeout: float) -> bool:
        """Wait until the registry has the job's terminal event; False on timeout."""
        record = self._registry.get(job_id)
        deadline = time.monotonic() + timeout
        while record is not None and not record.state.terminal:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    # --- results and status --------------------------------------------------------------

    def _record(self, job_id: str) -> JobRecord:
        record = self._registry.get(job_id)
        if record is None:
            raise JobNotFoundError(job_id)
        return record

    async def result(self, job_id: str) -> Any:
        """The job's return value; a failed or cancelled job raises its typed error."""
        self._record(job_id)
        ref = self._runs.get(job_id)
        if ref is None:
            raise JobNotFoundError(job_id)
        # Answer once the registry agrees, so status() after ray.get(result) is final too.
        await self._done.setdefault(job_id, asyncio.Event()).wait()
        try:
            return await ref
        except JobCancelledError as e:
            raise JobCancelledError(job_id, forced=e.forced) from None
        except JobFailedError as e:
            raise JobFailedError(job_id, e.error, e.traceback) from None
        except RayActorError as e:
            record = self._record(job_id)
            if record.state is JobState.CANCELLED:
                raise JobCancelledError(job_id, forced=record.forced) from None
            raise JobFailedError(job_id, death_reason(e)) from None

    async def _live_status(self, job_id: str) -> JobStatus | None:
        """The job actor's own status while it runs (fresher than the registry), or None
        when the job has ended or its actor does not answer in time."""
        record = self._registry.get(job_id)
        actor = self._actors.get(job_id)
        if record is None or actor is None or record.state.terminal:
            return None
        try:
            status: JobStatus = await asyncio.wait_for(
                _as_future(actor.status.remote()), STATUS_TIMEOUT
            )
        except (RayActorError, TimeoutError, GetTimeoutError):
            return None
        return status

    async def get_status(self, job_id: str) -> JobStatus:
        await self.start()  # a restarted controller resumes its loops on first use
        record = self._record(job_id)
        return await self._live_status(job_id) or record.status()

    async def list_jobs(self, states: list[str] | None = None) -> list[JobStatus]:
        await self.start()  # a restarted controller resumes its loops on first use
        wanted = set(states or ())
        return [
            r.status() for r in self._registry.records() if not wanted or r.state.value in wanted
        ]

    async def job_actor(self, job_id: str) -> ActorHandle | None:
        self._record(job_id)
        return self._actors.get(job_id)

    # --- commands ------------------------------------------------------------------------

    async def _command(self, job_id: str, command: str) -> JobStatus:
        record = self._record(job_id)
        actor = self._actors.get(job_id)
        if actor is None or record.state.terminal:
            if command == "cancel" and record.state is JobState.CANCELLED:
                return record.status()
            raise InvalidTransitionError(job_id, record.state.value, command)
        try:
            status: JobStatus = await getattr(actor, command).remote()
            return status
        except RayActorError:
            return await self._settled_status(job_id, command)

    async def _settled_status(self, job_id: str, command: str) -> JobStatus:
        record = self._record(job_id)
        await self._settled(job_id, 1.0)
        if command != "cancel" or record.state is not JobState.CANCELLED:
            raise InvalidTransitionError(job_id, record.state.value, command)
        return record.status()

    async def command(
        self, job_id: str, command: str, request_key: tuple[str, str] | None = None
    ) -> JobStatus:
        """Run ``pause|resume|cancel``; with a ``request_key`` (client id, request id) a
        repeated request is applied once and answered with the first outcome."""
        if command not in ("pause", "resume", "cancel"):
            raise ValueError(f"unknown command {command!r}")
        if request_key is None:
            return await self._command(job_id, command)
        status: JobStatus = await self._idempotency.run(
            request_key, lambda: self._command(job_id, command)
        )
        return status

    async def snapshot(self, job_id: str) -> dict[str, Any] | None:
        """The ``job.snapshot`` data of a job, or None for an unknown job."""
        record = self._registry.get(job_id)
        if record is None:
            return None
        snap = record.snapshot()
        live = await self._live_status(job_id)
        if live is not None:
            snap.update(
                state=live.state.value,
                status=live.state.value,
                progress=live.progress,
                message=live.message,
            )
        return snap

    async def pause_job(self, job_id: str) -> JobStatus:
        return await self._command(job_id, "pause")

    async def resume_job(self, job_id: str) -> JobStatus:
        return await self._command(job_id, "resume")

    async def cancel_job(self, job_id: str) -> JobStatus:
        return await self._command(job_id, "cancel")

    async def reap_job(self, job_id: str, forced: bool = False) -> None:
        """Kill a job's actor after a moment (the actor asks this after a forced cancel)."""
        await asyncio.sleep(REAP_DELAY)
        actor = self._actors.pop(job_id, None) or runtime.get_actor(runtime.job_actor_name(job_id))
        if actor is not None:
            ray.kill(actor, no_restart=True)

    # --- background loops ----------------------------------------------------------------

    def _apply_entries(self, entries: list[LogEntry]) -> None:
        for entry in entries:
            if entry.type.startswith(("job.", "agent.")):
                self._registry.apply_frame(entry.frame)

    async def _resync_after(self, reset: Reset) -> None:
        # Events were lost to this reader (new hub epoch, or it fell behind the history):
        # ask the live jobs themselves where they are.
        logger.warning("controller lost hub events (%s); resyncing jobs", reset.why)
        await self._resync()

    async def feed_stats(self) -> dict[str, object]:
        """The hub feed's cursor, errors and resets (tests and /healthz read it)."""
        return self._feed.stats()

    def _forget_trimmed(self) -> None:
        """Drop results of jobs the registry no longer keeps (it keeps the newest finished)."""
        for table in (self._runs, self._done, self._options):
            for job_id in [j for j in table if j not in self._registry]:
                del table[job_id]

    async def _resync(self) -> None:
        for job_id in list(self._actors):
            status = await self._live_status(job_id)
            record = self._registry.get(job_id)
            if status is None or record is None:
                continue
            record.state, record.progress = status.state, status.progress
            record.message, record.updated_at = status.message, status.updated_at

    async def _metrics_loop(self) -> None:
        while True:
            try:
                self._forget_trimmed()
                await self.publish_system_events()
            except Exception:
                logger.exception("system metrics failed")
            await asyncio.sleep(self._config.metrics_interval)

    async def publish_system_events(self) -> dict[str, Any]:
        """Publish one ``system.metrics`` (and any due ``system.alert``); return the metrics."""
        cluster = await asyncio.to_thread(collect_cluster_metrics)
        stats = await self._hub.stats.remote()
        metrics = {
            **{k: v for k, v in cluster.items() if k != "node_ids"},
            "jobs": self._registry.counts(),
            "hub": {k: stats[k] for k in ("head", "size", "capacity")},
        }
        events = [_system_event("system.metrics", metrics)]
        alerts = self._rules.nodes(set(cluster["node_ids"]))
        alerts += self._rules.stalls(self._registry, time.monotonic())
        alerts += self._rules.history(stats["fill"], stats["size"], stats["capacity"])
        events += [_system_event("system.alert", a) for a in alerts]
        for event in events:
            self._emitter.emit(event, False)
        return metrics


def _system_event(event_type: str, data: dict[str, Any]) -> dict[str, Any]:
    event = make_event(event_type, data)
    event["channel"] = SYSTEM_CHANNEL
    return event


async def _as_future(ref: Any) -> Any:
    return await ref


ControllerActor: Any = ray.remote(Controller)


def ensure_controller(config: SystemConfig | None = None) -> Any:
    handle = ControllerActor.options(**runtime.singleton_options(runtime.CONTROLLER_NAME)).remote(
        config
    )
    ray.get(handle.start.remote())
    return handle
