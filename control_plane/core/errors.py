"""The control plane's errors, each with a stable wire ``code``.

    ControlPlaneError
    ├── AuthError                missing or wrong token, refused origin
    ├── JobNotFoundError         no job with that id
    ├── InvalidTransitionError   a command the job's state does not allow
    │   └── NotSuspendableError  suspend of a job that has never called ``ctx.save``
    ├── JobError                 raised by ``ray.get(job.result)``
    │   ├── JobFailedError       the job body raised
    │   └── JobCancelledError    the job was cancelled (``forced`` when it was killed)
    ├── HubUnavailableError      the EventHub actor cannot be reached
    ├── PublishError             a publish was not acknowledged: the publisher stops
    │   └── EventLogError        the hub's event log could not be written (disk full,
    │                            read-only): nothing of the batch was acknowledged
    └── CommandError             a command failed on the way (Ray error translated)

Every error pickles with its arguments, so it survives a trip through Ray and comes out
of ``ray.get`` as the same type. A client frame the gateway cannot accept is not one of
these: :class:`control_plane.core.protocol.BadFrame` never leaves the gateway.
"""

from __future__ import annotations

from typing import Any


class ControlPlaneError(Exception):
    """Base of every error the control plane raises on purpose."""

    code = "internal_error"

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.__dict__))


def _rebuild(cls: type[ControlPlaneError], state: dict[str, Any]) -> ControlPlaneError:
    err = cls.__new__(cls)
    Exception.__init__(err, state.get("message", ""))
    err.__dict__.update(state)
    return err


class AuthError(ControlPlaneError):
    code = "unauthorized"


class ForbiddenError(ControlPlaneError):
    """The principal may not see or do what it asked (its role, or the job's owner)."""

    code = "forbidden"


class JobNotFoundError(ControlPlaneError):
    code = "job_not_found"

    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job with id {job_id!r}")
        self.job_id = job_id


class InvalidTransitionError(ControlPlaneError):
    """A command that the job's current state does not allow (``pause`` of a completed job)."""

    code = "invalid_transition"

    def __init__(self, job_id: str, state: str, command: str) -> None:
        super().__init__(f"cannot {command} job {job_id!r}: it is {state}")
        self.job_id = job_id
        self.state = state
        self.command = command


class NotSuspendableError(InvalidTransitionError):
    """``suspend`` of a job with no saved state: nothing to resume it from."""

    code = "not_suspendable"

    def __init__(self, job_id: str, state: str) -> None:
        super().__init__(job_id, state, "suspend")
        self.message = (
            f"cannot suspend job {job_id!r}: it has never called ctx.save(state), so there "
            "is nothing to resume it from"
        )
        self.args = (self.message,)


class JobError(ControlPlaneError):
    """Base of what ``ray.get(job.result)`` raises for a job that did not complete."""

    code = "job_error"

    def __init__(self, job_id: str, message: str) -> None:
        super().__init__(message)
        self.job_id = job_id


class JobFailedError(JobError):
    code = "job_failed"

    def __init__(self, job_id: str, error: str, traceback: str = "") -> None:
        super().__init__(job_id, f"job {job_id!r} failed: {error}")
        self.error = error
        self.traceback = traceback


class JobCancelledError(JobError):
    code = "job_cancelled"

    def __init__(self, job_id: str, forced: bool = False) -> None:
        how = "killed after the cancel grace period" if forced else "cancelled"
        super().__init__(job_id, f"job {job_id!r} was {how}")
        self.forced = forced


class HubUnavailableError(ControlPlaneError):
    code = "hub_unavailable"


class PublishError(ControlPlaneError):
    """A publish to the hub failed; the emitter that saw it raises this from then on, so
    the publisher learns at its next event that the ones since were not delivered."""

    code = "publish_failed"


class EventLogError(PublishError):
    """The hub could not write a batch to its event log (disk full, read-only file): the
    batch was neither appended nor acknowledged."""

    code = "event_log_unwritable"


class CommandError(ControlPlaneError):
    code = "command_failed"
