"""The Python client's errors, each also the control plane's error of the same meaning.

Beside :mod:`control_plane.core.errors`::

    ControlPlaneError
    ├── CommandRejected          an ``error`` reply: ``code``, ``message``, ``request_id``
    │   ├── JobNotFound          also a JobNotFoundError (code job_not_found)
    │   └── TransitionRejected   also an InvalidTransitionError (code invalid_transition,
    │                            or not_suspendable)
    ├── ConnectionLost           closed for good: a code not retried, or the client closed
    │   └── Unauthorized         also an AuthError: closed with 4401 or 4403
    └── RequestTimeout           also a TimeoutError: no connection or reply in time
"""

from __future__ import annotations

import re

from control_plane.core.errors import (
    AuthError,
    ControlPlaneError,
    ForbiddenError,
    InvalidTransitionError,
    JobNotFoundError,
)


class CommandRejected(ControlPlaneError):
    """The server answered a request with an ``error`` frame."""

    def __init__(
        self, code: str, message: str, request_id: str | None = None, job_id: str = ""
    ) -> None:
        ControlPlaneError.__init__(self, message)
        self.code = code
        self.request_id = request_id
        self.job_id = job_id


class JobNotFound(CommandRejected, JobNotFoundError):
    """No job with that id (``except JobNotFoundError`` catches it too)."""


class TransitionRejected(CommandRejected, InvalidTransitionError):
    """The job's state does not allow the command (``pause`` of a completed job)."""

    def __init__(
        self, code: str, message: str, request_id: str | None = None, job_id: str = ""
    ) -> None:
        super().__init__(code, message, request_id, job_id)
        found = re.search(r"cannot (\w+) job .*: it is (\w+)", message)
        self.command, self.state = found.groups() if found else ("", "")


class Forbidden(CommandRejected, ForbiddenError):
    """The principal's role or the job's owner does not allow it (code ``forbidden``)."""


class ConnectionLost(ControlPlaneError):
    """The connection is gone for good: a close code that is not retried, or closed."""

    code = "connection_lost"

    def __init__(self, message: str, close_code: int | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.close_code = close_code
        self.reason = reason


class Unauthorized(ConnectionLost, AuthError):
    """The server refused us with 4401 (token) or 4403 (origin); retrying would not help."""

    code = "unauthorized"


class RequestTimeout(ControlPlaneError, TimeoutError):
    code = "timeout"


REJECTIONS: dict[str, type[CommandRejected]] = {
    "job_not_found": JobNotFound,
    "invalid_transition": TransitionRejected,
    "not_suspendable": TransitionRejected,  # suspend of a job that never saved a state
    "forbidden": Forbidden,
}
