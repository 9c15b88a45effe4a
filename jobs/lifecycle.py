"""Job states and the transition table. No Ray here.

::

    pending ──start──▶ running ──pause──▶ pausing ──hold──▶ paused
       │                  ▲  ◀───resume───────┘   ◀──resume───┘
       │                  └──────────────────────────────────────┐
       └──────────────▶ completed | failed | cancelled ◀──────────┘

``pause`` and ``cancel`` act at the job's checkpoints: ``pausing`` becomes ``paused`` once the
body reaches one; ``cancel`` makes the next checkpoint raise. A command that is already
satisfied (pause while paused) changes nothing; a command on a finished job raises
:class:`~control_plane.errors.InvalidTransitionError`.
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
