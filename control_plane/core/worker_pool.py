"""The warm pool's policy: which jobs take a warm worker, how many to keep, when to shrink.

A cold submit waits for Ray to start a worker process for the job's actor (about half a
second on 2 CPUs, most of ``submit → job.started``). The controller keeps a few job actors
started ahead, holding no job; a submit hands one its job and the pool starts another in
the background. This module is the bookkeeping, fed the time and what happened to each
worker; ``control_plane/actors/worker_pool.py`` is the Ray shell that makes and kills them.

A worker's life::

    STARTING ──ready──▶ IDLE ──take──▶ (handed out: the job's actor; never back)
        │                 │
        └──failed──▶ (gone) ◀──retire── (shrunk, drained)

A worker runs **one job and is not reused**, whatever the job's end: the controller kills
every job's actor once its run is over, as it did before the pool. Reuse after a clean
completion would be allowed, but the job's module globals, threads and memory survive in
a process; retiring it costs one process start, off the submit's path. So a failed,
cancelled or killed job's process is never handed another job by construction: nothing
goes back to IDLE.

Jobs that need what a pooled worker was not made with go cold, as before the pool: their
own ``resources``, a ``runtime_env``, or ``num_cpus`` other than the pool's.

Every worker's id is the job id it will carry: the worker is made under the job actor's
name for that id, so each path that finds a job's actor by name finds a pooled one too.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

DEFAULT_POOL_SIZE = 2  # warm workers; 0 turns the pool off
DEFAULT_IDLE_AFTER = 300.0  # seconds without a submit before the pool shrinks
DEFAULT_IDLE_SIZE = 1  # warm workers kept through a quiet spell
# Seconds from a take to the start of its replacement. A worker's start costs about a
# CPU-second (Python, Ray, our imports); begun at once, it took the CPU from the job just
# handed out: warm submit → job.started went from about 180 ms to 0.6-5 s on a loaded
# 2-CPU box.
DEFAULT_REFILL_DELAY = 1.0
FIRST_BACKOFF = 1.0  # seconds before the next start after a worker failed to start
MAX_BACKOFF = 30.0


class WorkerState(enum.StrEnum):
    STARTING = "starting"  # created; its process has not answered yet
    IDLE = "idle"  # answered, holds no job: the next eligible submit may take it


class WorkerStateError(RuntimeError):
    """A pool move its worker's state does not allow (a bug in the shell, never input)."""

    def __init__(self, worker_id: str, state: str, move: str) -> None:
        super().__init__(f"pool worker {worker_id} is {state}: cannot {move}")
        self.worker_id, self.state, self.move = worker_id, state, move


@dataclass(frozen=True)
class PoolConfig:
    """How many warm job workers the controller keeps; ``size=0`` turns the pool off."""

    size: int = DEFAULT_POOL_SIZE
    idle_after: float = DEFAULT_IDLE_AFTER  # no submit this long: shrink to idle_size
    idle_size: int = DEFAULT_IDLE_SIZE
    num_cpus: float = 0.0  # what each worker reserves (JobOptions.num_cpus's default)
    ready_timeout: float = 120.0  # a worker not answering this long after its start is dropped
    refill_delay: float = DEFAULT_REFILL_DELAY  # from a take to the start of its replacement

    def __post_init__(self) -> None:
        if self.size < 0 or self.idle_size < 0:
            raise ValueError(f"a pool size is 0 or more, got {self.size}/{self.idle_size}")
        if self.idle_after <= 0 or self.ready_timeout <= 0:
            raise ValueError("idle_after and ready_timeout are > 0")
        if self.num_cpus < 0 or self.refill_delay < 0:
            raise ValueError("num_cpus and refill_delay are >= 0")


class Placement(Protocol):
    """What of a job's options decides where its actor runs (``JobOptions`` has these)."""

    @property
    def num_cpus(self) -> float: ...

    @property
    def resources(self) -> Mapping[str, float]: ...

    @property
    def runtime_env(self) -> Mapping[str, Any] | None: ...


def cold_reason(options: Placement, config: PoolConfig) -> str | None:
    """Why a job with ``options`` cannot run in a pooled worker, or None when it can."""
    if options.resources:
        return "it asks for resources"
    if options.runtime_env:
        return "it has a runtime_env"
    if options.num_cpus != config.num_cpus:
        return f"it reserves {options.num_cpus:g} CPUs, a pooled worker {config.num_cpus:g}"
    return None


class WorkerPool:
    """The pool's state: its workers, the demand it saw, and what to start or retire now.

    Pure: every method takes the time it is told, so tests drive it without waiting."""

    def __init__(self, config: PoolConfig, now: float) -> None:
        self.config = config
        self._size = config.size
        self._workers: dict[str, tuple[WorkerState, float]] = {}  # id → (state, since)
        self._last_demand = now  # the pool starts full, as after a submit
        self._failures = 0
        self._retry_at = 0.0
        self._refill_at: float | None = None  # set by a take: its replacement waits until then
        self.hits = 0  # submits that took a warm worker
        self.misses = 0  # eligible submits that found none idle (they went cold)
        self.cold = 0  # submits whose options keep them off the pool
        self.failed = 0  # workers that did not start

    # --- what the shell asks -------------------------------------------------------------

    @property
    def size(self) -> int:
        return self._size

    def resize(self, size: int) -> None:
        """A new target size (0 turns the pool off; :meth:`to_retire` names the extra)."""
        if size < 0:
            raise ValueError(f"a pool size is 0 or more, got {size}")
        self._size = size

    def target(self, now: float) -> int:
        """How many workers the pool wants now: its size while submits come, fewer once
        none came for ``idle_after`` seconds."""
        if now - self._last_demand >= self.config.idle_after:
            return min(self._size, self.config.idle_size)
        return self._size

    def to_start(self, now: float) -> int:
        """How many workers to start now: none while a take's refill waits
        (``refill_delay``) or while backing off after a failed start."""
        if now < self._retry_at:
            return 0
        if self._refill_at is not None:
            if now < self._refill_at:
                return 0
            self._refill_at = None
        return max(0, self.target(now) - len(self._workers))

    def next_due(self, now: float) -> float | None:
        """Seconds until a refill or a retry is due, if one waits."""
        due = [t - now for t in (self._refill_at, self._retry_at) if t is not None and t > now]
        return min(due, default=None)

    def to_retire(self, now: float) -> list[str]:
        """Idle workers beyond the target, the newest first, and starting ones that did
        not answer within ``ready_timeout``."""
        late = [
            w
            for w, (state, since) in self._workers.items()
            if state is WorkerState.STARTING and now - since > self.config.ready_timeout
        ]
        extra = len(self._workers) - len(late) - self.target(now)
        idle = [w for w, (state, _) in self._workers.items() if state is WorkerState.IDLE]
        return late + (list(reversed(idle))[:extra] if extra > 0 else [])

    def idle(self) -> list[str]:
        return [w for w, (state, _) in self._workers.items() if state is WorkerState.IDLE]

    def __contains__(self, worker_id: object) -> bool:
        return worker_id in self._workers

    def stats(self, now: float) -> dict[str, int]:
        states = [state for state, _ in self._workers.values()]
        return {
            "size": self._size,
            "target": self.target(now),
            "idle": states.count(WorkerState.IDLE),
            "starting": states.count(WorkerState.STARTING),
            "hits": self.hits,
            "misses": self.misses,
            "cold": self.cold,
            "failed": self.failed,
        }

    # --- what happened -------------------------------------------------------------------

    def starting(self, worker_id: str, now: float) -> None:
        """A worker was created under ``worker_id`` (a fresh job id)."""
        if worker_id in self._workers:
            raise WorkerStateError(worker_id, self._workers[worker_id][0].value, "start again")
        self._workers[worker_id] = (WorkerState.STARTING, now)

    def ready(self, worker_id: str, now: float) -> bool:
        """The worker answered: it may be taken. False when the pool dropped it meanwhile
        (the shell kills it)."""
        entry = self._workers.get(worker_id)
        if entry is None:
            return False
        if entry[0] is not WorkerState.STARTING:
            raise WorkerStateError(worker_id, entry[0].value, "become ready")
        self._workers[worker_id] = (WorkerState.IDLE, now)
        self._failures = 0
        return True

    def start_failed(self, worker_id: str, now: float) -> None:
        """The worker did not start: drop it and wait before the next start, longer after
        each failure in a row."""
        if self._workers.pop(worker_id, None) is None:
            return
        self.failed += 1
        self._failures += 1
        backoff = min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** (self._failures - 1))
        self._retry_at = now + backoff

    def take(self, now: float) -> str | None:
        """Hand the oldest idle worker to a submit, for good (it never comes back); None
        when none is idle. Either way the submit counts as demand, and the refill waits
        ``refill_delay`` (from the first take it has not made up for yet)."""
        self._last_demand = now
        if self._refill_at is None:
            self._refill_at = now + self.config.refill_delay
        for worker_id, (state, _) in self._workers.items():
            if state is WorkerState.IDLE:
                del self._workers[worker_id]
                self.hits += 1
                return worker_id
        self.misses += 1
        return None

    def went_cold(self) -> None:
        """A submit whose options keep it off the pool (counted, not demand)."""
        self.cold += 1

    def retire(self, worker_id: str) -> bool:
        """Drop a worker that holds no job (shrink, drain, gone); False if not the pool's."""
        return self._workers.pop(worker_id, None) is not None

    def drain(self) -> list[str]:
        """Turn the pool off: every worker it holds, to be killed."""
        self._size = 0
        gone = list(self._workers)
        self._workers.clear()
        return gone
