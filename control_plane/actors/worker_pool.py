"""The warm pool's Ray shell: makes job actors ahead of their jobs, hands them out, kills
the extra ones. The policy is :mod:`control_plane.core.worker_pool`; this runs in the
controller's event loop.

A pooled worker is a :class:`jobs.actor.JobActor` made with no job, under the name of the
job id it will carry (:func:`control_plane.actors.runtime.job_actor_name`), detached and
reserving what a default job reserves. The controller adopts it with the job's spec
(``adopt``) and then runs it as any job actor; at the run's end it is killed as any job
actor is. A worker that no submit took keeps its name and its id: the controller's
registry does not know it, which is how a restarted controller tells a pooled worker it
did not hand out (:meth:`WarmPool.sweep_orphans`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from typing import Any

import ray
from ray.actor import ActorHandle

from control_plane.actors import runtime
from control_plane.core.worker_pool import Placement, PoolConfig, WorkerPool, cold_reason
from jobs.actor import JobActorRemote

logger = logging.getLogger(__name__)

TICK = 1.0  # seconds between looks at the pool when nothing wakes it


def new_job_id() -> str:
    return uuid.uuid4().hex[:12]


class WarmPool:
    """Pooled job workers for one controller. ``take`` is synchronous and instant; the loop
    (:meth:`run`) starts and retires workers in the background."""

    def __init__(self, config: PoolConfig) -> None:
        self.config = config
        self._pool = WorkerPool(config, time.monotonic())
        self._handles: dict[str, ActorHandle] = {}
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.Task[None] | None = None
        self._stopped = False

    def start(self) -> None:
        """Start the background loop unless it runs."""
        if self._stopped or (self._loop is not None and not self._loop.done()):
            return
        self._loop = asyncio.get_running_loop().create_task(self.run())

    def take(self, options: Placement) -> tuple[str, ActorHandle] | None:
        """A warm worker for a job with ``options`` and the job id it carries, or None: the
        job goes cold (its options need another worker, or none is idle)."""
        if self._stopped or cold_reason(options, self.config) is not None:
            self._pool.went_cold()
            return None
        now = time.monotonic()
        if self._pool.size == 0:
            return None
        worker_id = self._pool.take(now)
        self._wake.set()  # its refill is due in refill_delay: the loop waits for it
        if worker_id is None:
            return None
        return worker_id, self._handles.pop(worker_id)

    def __contains__(self, worker_id: object) -> bool:
        return worker_id in self._pool

    def resize(self, size: int) -> None:
        self._pool.resize(size)
        self._wake.set()

    def stats(self) -> dict[str, Any]:
        return {**self._pool.stats(time.monotonic()), "idle_ids": self._pool.idle()}

    async def run(self) -> None:
        while not self._stopped:
            try:
                self._step()
            except Exception:
                logger.exception("worker pool: a step failed")
            self._wake.clear()
            due = self._pool.next_due(time.monotonic())
            wait = TICK if due is None else min(TICK, due + 0.001)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    def _step(self) -> None:
        now = time.monotonic()
        for worker_id in self._pool.to_retire(now):
            self._pool.retire(worker_id)
            self._kill(worker_id)
        for _ in range(self._pool.to_start(now)):
            self._start_one(now)

    def _start_one(self, now: float) -> None:
        worker_id = new_job_id()
        self._pool.starting(worker_id, now)
        try:
            handle = JobActorRemote.options(
                name=runtime.job_actor_name(worker_id),
                namespace=runtime.NAMESPACE,
                lifetime="detached",
                num_cpus=self.config.num_cpus,
                max_restarts=0,
            ).remote()
        except Exception:
            logger.warning("worker pool: could not create a worker", exc_info=True)
            self._pool.start_failed(worker_id, time.monotonic())
            return
        self._handles[worker_id] = handle
        task = asyncio.get_running_loop().create_task(self._await_ready(worker_id, handle))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _await_ready(self, worker_id: str, handle: ActorHandle) -> None:
        try:
            await asyncio.wait_for(_ready(handle), self.config.ready_timeout)
        except Exception as e:
            logger.warning("worker pool: worker %s did not start: %r", worker_id, e)
            self._pool.start_failed(worker_id, time.monotonic())
            self._kill(worker_id, handle)
            return
        if not self._pool.ready(worker_id, time.monotonic()):
            self._kill(worker_id, handle)  # dropped meanwhile (shrunk, drained)
            return
        try:  # returns when a submit hands it a job; fails when it dies idle
            await handle.wait_adopted.remote()
        except Exception as e:
            if self._pool.retire(worker_id):  # still idle: the pool starts another
                logger.warning("worker pool: idle worker %s died: %r", worker_id, e)
                self._handles.pop(worker_id, None)
                self._wake.set()

    def _kill(self, worker_id: str, handle: ActorHandle | None = None) -> None:
        handle = self._handles.pop(worker_id, None) or handle
        if handle is not None:
            with contextlib.suppress(Exception):
                ray.kill(handle, no_restart=True)

    def drain(self) -> int:
        """Stop the pool for good and kill every worker it holds; return how many."""
        self._stopped = True
        gone = self._pool.drain()
        for worker_id in gone:
            self._kill(worker_id)
        for task in list(self._tasks):
            task.cancel()
        if self._loop is not None:
            self._loop.cancel()
        return len(gone)


async def _ready(handle: ActorHandle) -> None:
    await handle.ready.remote()


def named_job_actors() -> set[str]:
    """The job ids of every job actor alive under its name (blocking: a GCS call)."""
    return {
        a["name"].removeprefix(runtime.JOB_NAME_PREFIX)
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["namespace"] == runtime.NAMESPACE and a["name"].startswith(runtime.JOB_NAME_PREFIX)
    }
