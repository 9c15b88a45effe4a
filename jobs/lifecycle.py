"""Job states and the transition table. No Ray here.

::

    pending ──start──▶ running ──pause──▶ pausing ──hold──▶ paused
       │                  ▲  ◀───resume───────┘   ◀──resume───┘
       │                  └──────────────────────────────────────┐
       └──────────────▶ completed | failed | cancelled ◀──────────┘

    running | pausing | paused ──park──▶ suspended ──resume──▶ pending (a new actor)
    running | pausing | paused ──restart──▶ pending (its actor died; a new one)

``pause`` and ``cancel`` act at the job's checkpoints: ``pausing`` becomes ``paused`` once the
body reaches one; ``cancel`` makes the next checkpoint raise. A command that is already
satisfied (pause while paused) changes nothing; a command on a finished job raises
:class:`~control_plane.errors.InvalidTransitionError`.

``suspend`` acts at a checkpoint too (``park``): the body stops there, its actor ends and
frees its resources, and the job waits in ``suspended`` (not terminal) with its last
``ctx.save`` state, until ``resume`` makes a new actor that starts from it. ``restart`` is the
controller's: the job's actor died and a new one starts from the last save.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel

from control_plane.core.errors import InvalidTransitionError


class JobState(StrEnum):
    PENDING = "pending"  # created, the body has not started yet
    RUNNING = "running"  # the body is running
    PAUSING = "pausing"  # a pause was asked; the body has not reached a checkpoint yet
    PAUSED = "paused"  # the body is held at a checkpoint
    COMPLETED = "completed"  # the body returned; the result is available
    FAILED = "failed"  # the body raised
    CANCELLED = "cancelled"  # cancelled at a checkpoint, or killed after the grace period
    SUSPENDED = "suspended"  # stopped at a checkpoint, no actor; resume starts it from its save

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED})
ACTIVE_STATES = frozenset(JobState) - TERMINAL_STATES


class Trigger(StrEnum):
    START = "start"  # the actor began running the body
    PAUSE = "pause"  # command
    HOLD = "hold"  # the body reached a checkpoint while pausing
    RESUME = "resume"  # command
    CANCEL = "cancel"  # command; a running body is stopped at its next checkpoint
    COMPLETE = "complete"  # the body returned
    FAIL = "fail"  # the body raised
    STOPPED = "stopped"  # the body ended because of a cancel (or was killed)
    SUSPEND = "suspend"  # command; a running body is stopped at its next checkpoint
    PARK = "park"  # the body stopped at a checkpoint because of a suspend
    RESTART = "restart"  # the job's actor died; the controller starts a new one


S, T = JobState, Trigger
# (state, trigger) → new state. Missing pairs are illegal, except the no-ops below.
TRANSITIONS: dict[tuple[JobState, Trigger], JobState] = {
    (S.PENDING, T.START): S.RUNNING,
    (S.PENDING, T.PAUSE): S.PAUSING,
    (S.PENDING, T.CANCEL): S.CANCELLED,
    (S.PENDING, T.FAIL): S.FAILED,
    (S.PAUSING, T.START): S.PAUSING,
    (S.RUNNING, T.PAUSE): S.PAUSING,
    (S.PAUSING, T.HOLD): S.PAUSED,
    (S.PAUSING, T.RESUME): S.RUNNING,
    (S.PAUSED, T.RESUME): S.RUNNING,
    (S.RUNNING, T.COMPLETE): S.COMPLETED,
    (S.PAUSING, T.COMPLETE): S.COMPLETED,
    (S.RUNNING, T.FAIL): S.FAILED,
    (S.PAUSING, T.FAIL): S.FAILED,
    (S.PAUSED, T.FAIL): S.FAILED,
    (S.RUNNING, T.STOPPED): S.CANCELLED,
    (S.PAUSING, T.STOPPED): S.CANCELLED,
    (S.PAUSED, T.STOPPED): S.CANCELLED,
    (S.RUNNING, T.PARK): S.SUSPENDED,
    (S.PAUSING, T.PARK): S.SUSPENDED,
    (S.PAUSED, T.PARK): S.SUSPENDED,
    (S.SUSPENDED, T.RESUME): S.PENDING,
    (S.SUSPENDED, T.CANCEL): S.CANCELLED,
    (S.PENDING, T.RESTART): S.PENDING,
    (S.RUNNING, T.RESTART): S.PENDING,
    (S.PAUSING, T.RESTART): S.PENDING,
    (S.PAUSED, T.RESTART): S.PENDING,
}
# Commands already satisfied: accepted, nothing changes.
NO_OPS = frozenset(
    {
        (S.PAUSING, T.PAUSE),
        (S.PAUSED, T.PAUSE),
        (S.RUNNING, T.RESUME),
        (S.PENDING, T.RESUME),
        (S.CANCELLED, T.CANCEL),
        # cancel of an active job is recorded by the caller; the state moves at STOPPED
        (S.RUNNING, T.CANCEL),
        (S.PAUSING, T.CANCEL),
        (S.PAUSED, T.CANCEL),
        # suspend likewise: the state moves at PARK, at the body's next checkpoint
        (S.RUNNING, T.SUSPEND),
        (S.PAUSING, T.SUSPEND),
        (S.PAUSED, T.SUSPEND),
        (S.SUSPENDED, T.SUSPEND),
    }
)


def next_state(job_id: str, state: JobState, trigger: Trigger) -> JobState:
    """The state after ``trigger``, or :class:`InvalidTransitionError` naming both."""
    new = TRANSITIONS.get((state, trigger))
    if new is not None:
        return new
    if (state, trigger) in NO_OPS:
        return state
    raise InvalidTransitionError(job_id, state.value, trigger.value)


class JobStatus(BaseModel):
    """What ``status()`` returns, on the actor, the controller and the wire."""

    job_id: str
    name: str = ""
    state: JobState
    progress: float = 0.0
    message: str | None = None
    owner: str = ""
    created_at: str
    updated_at: str
    error: str | None = None
    forced: bool = False
    cancel_requested: bool = False
