"""The controller actor: creates job actors, owns their results, routes commands.

A named, detached actor, so jobs belong to the control plane and not to the driver that
submitted them. It keeps the :class:`~control_plane.core.registry.JobRegistry` in step by
listening to the hub like any other reader, and publishes ``system.*`` events.

What must outlive it is in its store (``<state dir>/registry.sqlite3``,
:mod:`control_plane.core.registry_store`): each job's row (written at submit and as its
events come), its outcome (each job actor hands it over before its run returns, waiting
for a controller that is down), and its last ``ctx.save`` state. Ray restarts the
controller by running ``__init__`` again: the registry is read back from the store, and on
its first call (:meth:`Controller.start`; the gateway's health check makes one every few
seconds) the controller finds each active job's actor again by its name and watches it
with a ``wait_finished`` call, which fails when the actor dies, as the run's own ObjectRef
(gone with the old process) did. A job whose actor is gone is restarted from its last save
(``JobOptions.max_restarts``, ``job.restarted``), else failed with the reason.

A submit takes a job actor from the warm pool when it can (:mod:`control_plane.actors.
worker_pool`): made ahead under the name of the job id it then carries, so every lookup by
name above finds it. A restarted controller kills the pooled workers an earlier one left
idle (named job actors its registry does not know).
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
from ray import cloudpickle
from ray.actor import ActorHandle
from ray.exceptions import GetTimeoutError, RayActorError

from control_plane.actors import hub_shards, runtime, state_dir
from control_plane.actors.hub import RayHub
from control_plane.actors.hub_shards import ShardedSend, wait_shard_refs
from control_plane.actors.worker_pool import WarmPool, named_job_actors, new_job_id
from control_plane.core import priority
from control_plane.core.emitter import EventEmitter
from control_plane.core.encoding import encode_event
from control_plane.core.errors import (
    InvalidTransitionError,
    JobCancelledError,
    JobFailedError,
    JobNotFoundError,
)
from control_plane.core.hub_log import LogEntry, ReaderFilter
from control_plane.core.lanes import publish_lane
from control_plane.core.protocol import (
    JOB_CHANNEL_PREFIX,
    SYSTEM_CHANNEL,
    make_event,
    status_for,
    utc_now_iso,
)
from control_plane.core.reader import HubReader, Reset
from control_plane.core.registry import (
    IdempotencyCache,
    JobRecord,
    JobRegistry,
    record_from_stored,
    stored_state,
)
from control_plane.core.registry_store import (
    RegistryStore,
    SqliteRegistryStore,
    StoredOutcome,
)
from control_plane.core.shards import shard_of_job, sum_stats
from control_plane.core.system import AlertRules, SystemConfig, collect_cluster_metrics
from control_plane.core.worker_pool import PoolConfig, cold_reason
from control_plane.observability import logs, tracing
from control_plane.observability import metrics as obs_metrics
from jobs.actor import JobActorRemote, JobOptions, target_name
from jobs.lifecycle import JobState, JobStatus

logger = logging.getLogger(__name__)


def death_reason(error: BaseException) -> str:
    """One line on why a job's actor died, from Ray's error (a lost node, a crash, a kill)."""
    said = [line.strip() for line in str(error).splitlines()]
    said = [line for line in said if line.startswith("The actor")]
    why = [line for line in said if "because" in line]  # "... because its node has died."
    if why or said:
        first = (why or said)[0].split(" Worker exit detail:")[0]  # Ray's advice, not a reason
        return f"job actor died: {first[:300]}"
    return f"job actor died: {type(error).__name__}"


STATUS_TIMEOUT = 5.0
REAP_DELAY = 0.5
SETTLE_TIMEOUT = 5.0
SUSPENDED_SETTLE_TIMEOUT = 30.0  # for the registry to see a job.suspended its actor reported
NAME_RELEASE_TIMEOUT = 30.0  # a dead job actor's name is released by the GCS after a moment
COMMANDS = ("pause", "resume", "cancel", "suspend")


class Controller:
    def __init__(
        self,
        config: SystemConfig | None = None,
        state_dir_path: str | None = None,
        pool: PoolConfig | None = None,
    ) -> None:
        priority.favour_process()  # ahead of the jobs' bodies (core/priority.py)
        self._config = config or SystemConfig()
        # Job actors started ahead of their jobs (control_plane/core/worker_pool.py).
        self._pool = WarmPool(pool or PoolConfig())
        logs.configure_actor()
        # The hub's shards (one by default); shard 0 holds ``system`` and the broadcasts,
        # a job's events go to the shard of its channel (``core/shards.py``).
        self._hubs = hub_shards.handles()
        self._hub = self._hubs[0]
        self._submitted: dict[str, float] = {}  # job id → monotonic submit time, until started
        self._self: ActorHandle | None = None
        self._registry = JobRegistry()
        self._actors: dict[str, ActorHandle] = {}
        # Each job's pickled (target, args, kwargs, options), to make its actor again.
        self._specs: dict[str, bytes] = {}
        # The final status each job actor handed over with its outcome, until the registry
        # has the job's terminal event (or gives up waiting and records this instead).
        self._final: dict[str, JobStatus] = {}
        self._runs: dict[str, object] = {}  # each job's current run (a token per actor made)
        self._store: RegistryStore = SqliteRegistryStore(
            state_dir.resolve(state_dir_path) / state_dir.REGISTRY_FILE
        )
        self._recovery: asyncio.Task[None] | None = None
        self._stopping = False
        self._rules = AlertRules(self._config)
        # Numbered batches (one numbering per life of the controller): a batch that Ray sends
        # again after a hub restart is appended once. A failed publish is logged, not sticky:
        # the controller's own events must not stop for good after one.
        self._emitter: EventEmitter[dict[str, Any]] = EventEmitter(
            ShardedSend(self._hubs, f"controller-{uuid.uuid4().hex[:8]}"), wait_shard_refs
        )
        self._tasks: set[asyncio.Task[Any]] = set()
        self._idempotency = IdempotencyCache()
        self._done: dict[str, asyncio.Event] = {}
        # The hub sends this reader job events only, and of a burst of progress each job's
        # last one: the only one that changes what the registry keeps.
        # One reader per shard, each feeding the registry (a job's events are on one shard).
        reader_id = f"controller-{uuid.uuid4().hex[:8]}"
        self._feeds = [
            HubReader(
                RayHub(hub),
                reader_id,
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
            for hub in self._hubs
        ]
        self._feed = self._feeds[0]
        self._metrics: asyncio.Task[None] | None = None
        self._load()
        if any(_is_active(r) for r in self._registry.records()):
            # Restarted by Ray with jobs to watch: start (and recover) without waiting for
            # a caller. A call to itself runs once __init__ has returned.
            try:
                ray.get_runtime_context().current_actor.start.remote()
            except Exception:
                logger.warning("controller: could not schedule its start", exc_info=True)

    def _load(self) -> None:
        """Read the registry back from the store (a controller that Ray restarted)."""
        for job in self._store.jobs():
            record = record_from_stored(job)
            self._registry.add(record)
            self._specs[job.job_id] = job.spec
            if record.state.terminal:
                self._done.setdefault(job.job_id, asyncio.Event()).set()
        if self._specs:
            logger.info("controller restored %d jobs from its store", len(self._specs))

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
        for feed in self._feeds:
            feed.start()
        if self._metrics is None or self._metrics.done():
            self._metrics = asyncio.get_running_loop().create_task(self._metrics_loop())
        for feed in self._feeds:
            await feed.ready()
        if self._recovery is None:
            self._recovery = asyncio.get_running_loop().create_task(self._recover())
        await asyncio.shield(self._recovery)
        if not self._stopping:
            self._pool.start()  # after the recovery's sweep of pooled workers left behind

    async def _recover(self) -> None:
        """Watch the actors of the active jobs the store names again; a job whose actor died
        while no controller watched is restarted or failed now. Then ask the live ones where
        they are: their events while the controller was down did not reach its registry."""
        try:
            await self._sweep_pool_orphans()
            found: list[tuple[str, ActorHandle]] = []
            for record in self._registry.records():
                job_id = record.job_id
                if not _is_active(record) or job_id in self._actors:
                    continue
                name = runtime.job_actor_name(job_id)
                actor = await asyncio.to_thread(runtime.get_actor, name)
                if actor is None:
                    await self._died(job_id, "job actor gone while the controller was down")
                    continue
                found.append((job_id, actor))
            # Asked all at once: an actor still waiting for its resources answers late.
            held = await asyncio.gather(
                *(self._holds_job(job_id, actor) for job_id, actor in found)
            )
            for (job_id, actor), holds in zip(found, held, strict=True):
                if not holds:
                    # A pooled worker the last controller took for this job but never
                    # handed it (it died in between): the job has not started; start it.
                    _kill(actor, job_id)
                    try:
                        await self._launch(job_id)
                    except Exception as e:
                        self._emit_lifecycle(job_id, "job.failed", error=f"could not start: {e!r}")
                        self._done.setdefault(job_id, asyncio.Event()).set()
                    continue
                self._actors[job_id] = actor
                run = self._runs[job_id] = object()
                self._spawn(self._watch(job_id, actor, actor.wait_finished.remote(), run))
            await self._resync()
        except Exception:
            logger.exception("controller: recovering jobs failed")

    async def _holds_job(self, job_id: str, actor: ActorHandle) -> bool:
        """Whether a job's actor found by name holds its job: one made for it does; a pooled
        one may not yet. One that does not answer in time is taken to (its watch finds out)."""
        record = self._registry.get(job_id)
        options = self._spec(job_id)[3]
        if record is None or record.restarts or cold_reason(options, self._pool.config):
            return True  # never a pooled worker
        try:
            held: bool = await asyncio.wait_for(
                _as_future(actor.holds_job.remote()), STATUS_TIMEOUT
            )
        except Exception:
            return True
        return held

    async def _sweep_pool_orphans(self) -> None:
        """Kill the pooled workers an earlier controller left idle: job actors under a name
        whose job id the registry does not know (a pooled worker carries its future job's
        id; see control_plane/actors/worker_pool.py)."""
        try:
            named = await asyncio.to_thread(named_job_actors)
        except Exception:
            logger.warning("controller: could not list job actors", exc_info=True)
            return
        for job_id in named:
            if job_id in self._registry or job_id in self._pool:
                continue
            actor = await asyncio.to_thread(runtime.get_actor, runtime.job_actor_name(job_id))
            if actor is not None and job_id not in self._registry and job_id not in self._pool:
                logger.info("controller: killing pooled worker %s left idle", job_id)
                _kill(actor, job_id)

    # --- the warm pool -------------------------------------------------------------------

    async def pool_stats(self) -> dict[str, Any]:
        """The warm pool: size, target, idle and starting workers (``idle_ids``), hits
        (submits that took a warm worker), misses (found none idle), cold (options kept them
        off it), failed starts."""
        return self._pool.stats()

    async def set_pool_size(self, size: int) -> dict[str, Any]:
        """Change the pool's size at run time (0: every job starts cold); the pool grows or
        shrinks in the background."""
        self._pool.resize(size)
        return self._pool.stats()

    async def drain_pool(self) -> int:
        """Kill the pool's idle and starting workers and start no more (``stop``)."""
        return self._pool.drain()

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
        # A warm worker carries the id of the job it will run; no await from here to the
        # registry's add, so a recovery's sweep never sees the id unknown.
        warm = self._pool.take(options)
        job_id = warm[0] if warm is not None else new_job_id()
        name = name or target_name(target)
        owner = owner or getpass.getuser()
        created_at = utc_now_iso()
        spec = cloudpickle.dumps((target, tuple(args), dict(kwargs or {}), options))
        record = JobRecord(job_id, name, owner, created_at, updated_at=created_at)
        self._registry.add(record)
        self._specs[job_id] = spec
        self._submitted[job_id] = time.monotonic()
        self._store.put_job(stored_state(record, spec=spec))
        created = make_event(
            "job.created",
            {"job_id": job_id, "status": status_for("job.created"), "name": name, "owner": owner},
        )
        # Sent to the hub before the actor exists, so that it comes before every event of
        # the job: through the emitter it could wait behind a slow publish while a fast job
        # (a cached worker starts it in milliseconds) ran to its end. Not awaited: under
        # the load of starting workers a hub round trip took 80-200 ms of each submit.
        hub = self._hubs[shard_of_job(job_id, len(self._hubs))]
        frames = [encode_event(created)]
        self._spawn(_published(publish_lane(hub, frames).remote(frames), job_id))
        try:
            actor = await self._launch(job_id, warm[1] if warm is not None else None)
        except BaseException as e:
            self._registry.remove(job_id)
            self._specs.pop(job_id, None)
            self._store.forget([job_id])
            failed = {"job_id": job_id, "status": "failed", "error": f"could not start: {e!r}"}
            self._emitter.emit(make_event("job.failed", failed), True)  # after job.created
            raise
        return job_id, actor

    def _spec(self, job_id: str) -> tuple[Any, tuple[Any, ...], dict[str, Any], JobOptions]:
        target, args, kwargs, options = cloudpickle.loads(self._specs[job_id])
        return target, args, kwargs, options

    async def _launch(self, job_id: str, worker: ActorHandle | None = None) -> ActorHandle:
        """Make the job's actor (again: after a death or a suspend, from its last save), or
        hand the job to ``worker``, a pooled one made under the job's name, and watch its
        run."""
        target, args, kwargs, options = self._spec(job_id)
        record = self._record(job_id)
        actor_options: dict[str, Any] = {
            "name": runtime.job_actor_name(job_id),
            "namespace": runtime.NAMESPACE,
            "lifetime": "detached",
            "num_cpus": options.num_cpus,
            "max_restarts": 0,  # the controller restarts jobs, from their last save
        }
        if options.resources:
            actor_options["resources"] = options.resources
        if options.runtime_env:
            actor_options["runtime_env"] = options.runtime_env
        restored = self._store.checkpoint(job_id)
        run = self._runs[job_id] = object()  # the watches of earlier runs step aside
        previous = self._actors.pop(job_id, None)
        if previous is not None:  # a run stopped for a suspend, its actor not freed yet
            _kill(previous, job_id)
        job = (
            job_id,
            target,
            args,
            kwargs,
            record.name,
            record.owner,
            record.created_at,
            options,
            self._hubs[shard_of_job(job_id, len(self._hubs))],
            self._self,
            restored,
        )
        if worker is not None:
            # adopt and execute sent together, neither awaited (as a cold actor's creation
            # is not): a command sent meanwhile waits in the worker for its job
            # (JobActor._held). Awaiting adopt's answer took 100-400 ms of each submit on
            # a loaded 2-CPU box.
            self._actors[job_id] = worker
            self._final.pop(job_id, None)
            adopted: Any = worker.adopt.remote(*job)
            self._spawn(self._watch(job_id, worker, worker.execute.remote(), run, adopted))
            return worker
        deadline = time.monotonic() + NAME_RELEASE_TIMEOUT
        while True:
            try:
                actor = JobActorRemote.options(**actor_options).remote(*job)
                break
            except ValueError:  # the name of the job's dead actor is not released yet
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)
        self._actors[job_id] = actor
        self._final.pop(job_id, None)  # an earlier run's word
        self._spawn(self._watch(job_id, actor, actor.execute.remote(), run))
        return actor

    async def _watch(
        self, job_id: str, actor: ActorHandle, waiter: Any, run: object, adopted: Any = None
    ) -> None:
        """Wait for the run to end (``waiter``: its ``execute`` call, or ``wait_finished``
        after a controller restart); a death no one reported restarts the job or fails it.
        Then let the registry catch up with the job's last events and free its actor. A
        newer ``run`` of the job (a resume) makes this watch step aside. ``adopted``: a
        pooled worker's ``adopt`` call; when it fails (the worker died idle), the job starts
        cold instead, not counted as a restart."""

        def superseded() -> bool:
            return self._runs.get(job_id) is not run

        if adopted is not None and not await self._adopted(job_id, actor, adopted, superseded):
            return

        died: str | None = None
        try:
            await waiter
        except RayActorError as e:
            if (
                not superseded()
                and job_id not in self._final
                and not await self._settled(job_id, 1.0, superseded)
                and not superseded()
            ):
                died = death_reason(e)
        except Exception:
            pass  # a typed job error: the actor handed it over
        if died is not None:
            if self._actors.get(job_id) is actor:
                del self._actors[job_id]
            await self._died(job_id, died)
            return
        settled = await self._settled(job_id, SETTLE_TIMEOUT, superseded)
        _kill(actor, job_id)
        if superseded():
            return
        if not settled:
            self._record_final(job_id)
        self._final.pop(job_id, None)
        self._actors.pop(job_id, None)
        record = self._registry.get(job_id)
        if record is not None and record.state.terminal:
            self._done.setdefault(job_id, asyncio.Event()).set()

    async def _adopted(
        self, job_id: str, worker: ActorHandle, adopted: Any, superseded: Callable[[], bool]
    ) -> bool:
        """Whether the pooled worker took its job; if not, it is killed and the job
        started cold (or failed, when that fails too)."""
        try:
            await adopted
            return True
        except Exception as e:
            logger.warning("job %s: its pooled worker did not take it: %r", job_id, e)
            _kill(worker, job_id)
            if superseded():
                return False
            if self._actors.get(job_id) is worker:
                del self._actors[job_id]
            try:
                await self._launch(job_id)
            except Exception as cold:
                reason = f"its pooled worker failed ({e!r}), a cold start too ({cold!r})"
                await self._died(job_id, reason)
            return False

    def _record_final(self, job_id: str) -> None:
        """The registry never saw the job's terminal event (the hub refused it, say): record
        the status the job actor handed over with its outcome."""
        final = self._final.get(job_id)
        record = self._registry.get(job_id)
        if final is None or record is None or not _is_settled(final.state):
            return
        logger.warning("job %s: no %s event reached the registry; recorded", job_id, final.state)
        self._set_status(record, final)

    def _set_status(self, record: JobRecord, status: JobStatus) -> None:
        """Record a status the job's actor gave, without waiting for its event."""
        record.state, record.progress, record.message = (
            status.state,
            status.progress,
            status.message,
        )
        record.error, record.forced = status.error, status.forced
        record.updated_at = status.updated_at
        self._persist(record)

    async def _died(self, job_id: str, reason: str) -> None:
        """The job's actor died under it: a new actor from its last save, or ``job.failed``."""
        record = self._registry.get(job_id)
        if record is None or not _is_active(record):
            return
        options = self._spec(job_id)[3]
        attempt = record.restarts + 1
        if not self._stopping and attempt <= options.max_restarts:
            logger.warning("job %s: restart %d: %s", job_id, attempt, reason)
            obs_metrics.recorder().add("job_restarts")
            self._emit_lifecycle(job_id, "job.restarted", attempt=attempt, reason=reason)
            try:
                await self._launch(job_id)
                return
            except Exception as e:
                reason = f"{reason}; its restart failed: {type(e).__name__}: {e}"
        elif record.restarts:
            reason = f"{reason} (after {record.restarts} restarts)"
        self._emit_lifecycle(job_id, "job.failed", error=reason)
        self._done.setdefault(job_id, asyncio.Event()).set()

    def _emit_lifecycle(self, job_id: str, event_type: str, **data: Any) -> None:
        """Publish a job event of the controller's own and apply it to the registry (and its
        store) at once, without waiting for it to come back from the hub."""
        event = make_event(event_type, {"job_id": job_id, "status": status_for(event_type), **data})
        record = self._registry.apply(event)
        if record is not None:
            self._persist(record)
        try:
            self._emitter.emit(event, True)
        except Exception:  # recorded all the same: the registry is the controller's
            logger.exception("job %s: %s could not be published", job_id, event_type)

    def _persist(self, record: JobRecord) -> None:
        self._store.update_jobs([stored_state(record)])

    async def _settled(
        self, job_id: str, timeout: float, give_up: Callable[[], bool] = lambda: False
    ) -> bool:
        """Wait until the registry has the job's terminal (or ``job.suspended``) event;
        False on timeout, or as soon as ``give_up()``."""
        record = self._registry.get(job_id)
        deadline = time.monotonic() + timeout
        while record is not None and not _is_settled(record.state):
            if time.monotonic() > deadline or give_up():
                return False
            await asyncio.sleep(0.01)
        return True

    # --- what job actors hand over -------------------------------------------------------

    async def job_finished(
        self, job_id: str, kind: str, payload: Any, status: JobStatus, actor_id: str = ""
    ) -> None:
        """A job actor's run ended: keep its outcome (``value`` or ``error``; ``suspended``
        has none) and its final status in the store before the actor returns. The word of
        an actor that a newer run replaced (a resume came first) is ignored."""
        record = self._registry.get(job_id)
        current = self._actors.get(job_id)
        if record is None or (actor_id and current and current._actor_id.hex() != actor_id):
            return
        if kind in ("value", "error"):
            self._store.put_outcome(job_id, StoredOutcome(kind, cloudpickle.dumps(payload)))
        if isinstance(payload, JobFailedError):  # the status says what ray.get will say
            status = status.model_copy(update={"error": payload.error})
        self._final[job_id] = status
        self._store.update_jobs([stored_state(record, status)])

    async def save_checkpoint(self, job_id: str, blob: bytes) -> None:
        """A job's ``ctx.save``: its pickled state, kept for its next run."""
        self._record(job_id)
        self._store.put_checkpoint(job_id, blob)

    # --- results and status --------------------------------------------------------------

    def _record(self, job_id: str) -> JobRecord:
        record = self._registry.get(job_id)
        if record is None:
            raise JobNotFoundError(job_id)
        return record

    async def result(self, job_id: str) -> Any:
        """The job's return value; a failed or cancelled job raises its typed error."""
        await self.start()  # a restarted controller answers from its store
        record = self._record(job_id)
        # Answer once the registry agrees, so status() after ray.get(result) is final too.
        await self._done.setdefault(job_id, asyncio.Event()).wait()
        outcome = self._store.outcome(job_id)
        if outcome is None:  # the actor died or was killed: the registry says why
            if record.state is JobState.CANCELLED:
                raise JobCancelledError(job_id, forced=record.forced)
            raise JobFailedError(job_id, record.error or "the job ended without a result")
        value = cloudpickle.loads(outcome.blob)
        if outcome.kind == "value":
            return value
        if isinstance(value, JobCancelledError):
            raise JobCancelledError(job_id, forced=value.forced) from None
        if isinstance(value, JobFailedError):
            raise JobFailedError(job_id, value.error, value.traceback) from None
        raise value

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

    async def owners(self, job_ids: list[str] | None = None) -> dict[str, str]:
        """job id -> owner, of ``job_ids`` (those it knows) or of every job."""
        await self.start()
        if job_ids is None:
            return {r.job_id: r.owner for r in self._registry.records()}
        found = (self._registry.get(job_id) for job_id in job_ids)
        return {r.job_id: r.owner for r in found if r is not None}

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
        if record.state is JobState.SUSPENDED:
            return await self._command_suspended(job_id, command)
        actor = self._actors.get(job_id)
        if actor is None or record.state.terminal:
            if command == "cancel" and record.state is JobState.CANCELLED:
                return record.status()
            raise InvalidTransitionError(job_id, record.state.value, command)
        try:
            with tracing.span(f"job_actor.{command}", job_id=job_id) as current:
                status: JobStatus = await getattr(actor, command).remote()
                if status.state is JobState.PAUSED:
                    tracing.event(current, "job.paused", job_id=job_id)
        except RayActorError:
            return await self._settled_status(job_id, command)
        except InvalidTransitionError as e:
            if e.state != JobState.SUSPENDED.value:
                raise
            # Its actor has stopped for a suspend whose job.suspended the registry has not
            # seen yet (a resume right after the suspend's answer): once it has, the
            # controller answers for the job.
            settled = await self._settled(job_id, SUSPENDED_SETTLE_TIMEOUT)
            if settled and record.state is JobState.SUSPENDED:
                return await self._command_suspended(job_id, command)
            raise
        return status

    async def _settled_status(self, job_id: str, command: str) -> JobStatus:
        record = self._record(job_id)
        await self._settled(job_id, 1.0)
        if record.state is JobState.SUSPENDED:
            # Its actor ended for a suspend (a resume or cancel right after the suspend's
            # answer): the controller answers for a suspended job.
            return await self._command_suspended(job_id, command)
        if command == "cancel" and record.state is JobState.CANCELLED:
            return record.status()
        raise InvalidTransitionError(job_id, record.state.value, command)

    async def _command_suspended(self, job_id: str, command: str) -> JobStatus:
        """A suspended job has no actor: the controller answers for it."""
        record = self._record(job_id)
        if command == "resume":
            self._emit_lifecycle(job_id, "job.resumed")
            await self._launch(job_id)
        elif command == "cancel":
            self._emit_lifecycle(job_id, "job.cancelled", forced=False)
            self._done.setdefault(job_id, asyncio.Event()).set()
        elif command != "suspend":
            raise InvalidTransitionError(job_id, record.state.value, command)
        return record.status()

    async def command(
        self,
        job_id: str,
        command: str,
        request_key: tuple[str, str] | None = None,
        trace: dict[str, str] | None = None,
    ) -> JobStatus:
        """Run ``pause|resume|cancel|suspend``; with a ``request_key`` (client id, request id) a
        repeated request is applied once and answered with the first outcome. ``trace``: the
        caller's span (``observability/tracing.py``), when it traces."""
        if command not in COMMANDS:
            raise ValueError(f"unknown command {command!r}")
        with tracing.span("controller.command", trace, job_id=job_id, command=command):
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

    async def suspend_job(self, job_id: str) -> JobStatus:
        return await self._command(job_id, "suspend")

    async def stop_jobs(self) -> int:
        """End every active job for good (``control_plane.stop``): its actor killed, no
        restart, recorded ``cancelled`` (forced), so that no later controller revives it."""
        self._stopping = True
        self._pool.drain()
        ended = 0
        for record in self._registry.records():
            if record.state.terminal:
                continue
            job_id = record.job_id
            actor = self._actors.pop(job_id, None) or runtime.get_actor(
                runtime.job_actor_name(job_id)
            )
            if actor is not None:
                ray.kill(actor, no_restart=True)
            self._emit_lifecycle(job_id, "job.cancelled", forced=True)
            self._done.setdefault(job_id, asyncio.Event()).set()
            ended += 1
        await asyncio.to_thread(self._emitter.flush)
        return ended

    async def reap_job(self, job_id: str, forced: bool = False) -> None:
        """Kill a job's actor after a moment (the actor asks this after a forced cancel)."""
        await asyncio.sleep(REAP_DELAY)
        actor = self._actors.pop(job_id, None) or runtime.get_actor(runtime.job_actor_name(job_id))
        if actor is not None:
            ray.kill(actor, no_restart=True)

    # --- background loops ----------------------------------------------------------------

    def _apply_entries(self, entries: list[LogEntry]) -> None:
        changed: dict[str, JobRecord] = {}
        for entry in entries:
            if entry.type.startswith("job."):
                record = self._registry.apply_frame(entry.frame)
                if record is not None:
                    changed[record.job_id] = record
                    if entry.type == "job.started" and record.job_id in self._submitted:
                        waited = time.monotonic() - self._submitted.pop(record.job_id)
                        obs_metrics.recorder().observe("submit_to_started_seconds", waited)
            elif entry.type.startswith("agent."):
                self._registry.apply_frame(entry.frame)
        if changed:  # one transaction for the batch
            self._store.update_jobs(stored_state(r) for r in changed.values())

    async def _resync_after(self, reset: Reset) -> None:
        # Events were lost to this reader (new hub epoch, or it fell behind the history):
        # ask the live jobs themselves where they are.
        logger.warning("controller lost hub events (%s); resyncing jobs", reset.why)
        await self._resync()

    async def feed_stats(self) -> dict[str, object]:
        """The hub feed's cursor, errors and resets (tests and /healthz read it)."""
        if len(self._feeds) == 1:
            return self._feed.stats()
        stats = [feed.stats() for feed in self._feeds]
        summed = {
            k: sum(getattr(f, k) for f in self._feeds) for k in ("received", "errors", "resets")
        }
        return {**stats[0], **summed, "shards": stats}

    def _forget_trimmed(self) -> None:
        """Drop the jobs the registry no longer keeps (it keeps the newest finished), with
        their rows, outcomes and saved states."""
        gone = [j for j in self._specs if j not in self._registry]
        for job_id in gone:
            for table in (self._specs, self._done, self._final, self._runs, self._submitted):
                table.pop(job_id, None)
        self._store.forget(gone)

    async def _resync(self) -> None:
        for job_id in list(self._actors):
            status = await self._live_status(job_id)
            record = self._registry.get(job_id)
            if status is None or record is None:
                continue
            record.state, record.progress = status.state, status.progress
            record.message, record.updated_at = status.message, status.updated_at
            self._persist(record)

    async def _metrics_loop(self) -> None:
        while True:
            try:
                self._forget_trimmed()
                await self.publish_system_events()
            except Exception:
                logger.exception("system metrics failed")
            await asyncio.sleep(self._config.metrics_interval)

    async def set_metrics(self, on: bool) -> None:
        """Turn metrics on or off in the controller's process (benchmarks compare the two)."""
        obs_metrics.set_enabled(on)

    async def publish_system_events(self) -> dict[str, Any]:
        """Publish one ``system.metrics`` (and any due ``system.alert``); return the metrics."""
        cluster = await asyncio.to_thread(collect_cluster_metrics)
        stats = sum_stats(await asyncio.gather(*(h.stats.remote() for h in self._hubs)))
        metrics = {
            **{k: v for k, v in cluster.items() if k != "node_ids"},
            "jobs": self._registry.counts(),
            "hub": {k: stats[k] for k in ("head", "size", "capacity")},
        }
        for state, count in metrics["jobs"].items():
            obs_metrics.recorder().set("jobs", count, state=state)
        events = [_system_event("system.metrics", metrics)]
        alerts = self._rules.nodes(set(cluster["node_ids"]))
        alerts += self._rules.stalls(self._registry, time.monotonic())
        alerts += self._rules.history(stats["fill"], stats["size"], stats["capacity"])
        events += [_system_event("system.alert", a) for a in alerts]
        for event in events:
            self._emitter.emit(event, False)
        return metrics


def _is_settled(state: JobState) -> bool:
    """Whether a run in ``state`` is over: finished, or suspended (no actor)."""
    return state.terminal or state is JobState.SUSPENDED


def _is_active(record: JobRecord) -> bool:
    """Whether the job should have a live actor."""
    return not _is_settled(record.state)


def _system_event(event_type: str, data: dict[str, Any]) -> dict[str, Any]:
    event = make_event(event_type, data)
    event["channel"] = SYSTEM_CHANNEL
    return event


async def _published(ref: Any, job_id: str) -> None:
    try:
        await ref
    except Exception:
        logger.warning("job %s: job.created could not be published", job_id, exc_info=True)


def _kill(actor: ActorHandle, job_id: str) -> None:
    try:
        ray.kill(actor, no_restart=True)
    except Exception:
        logger.debug("job actor %s already gone", job_id, exc_info=True)


async def _as_future(ref: Any) -> Any:
    return await ref


ControllerActor: Any = ray.remote(Controller)


def ensure_controller(
    config: SystemConfig | None = None,
    state_dir: str | None = None,
    pool: PoolConfig | None = None,
) -> Any:
    """The controller actor, made unless it runs (a running one keeps its settings)."""
    handle = ControllerActor.options(**runtime.singleton_options(runtime.CONTROLLER_NAME)).remote(
        config, state_dir, pool
    )
    ray.get(handle.start.remote())
    return handle
