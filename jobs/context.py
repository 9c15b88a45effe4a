"""What a job body sees: :class:`JobContext` with checkpoints, progress and agent scopes.

The state lives in :class:`JobControl`, shared by three threads of the job actor: the loop
that runs the body, the loop that answers ``pause``/``resume``/``cancel``/``status`` (so
control calls never queue behind the work), and, for a plain ``def`` body, the worker thread
it runs in. One lock guards it; waiters on either loop are woken thread-safely.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
from collections.abc import Awaitable, Callable, Generator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

from control_plane.core.encoding import PROGRESS, Encoded, ProgressEncoder, encode_event
from control_plane.core.errors import (
    InvalidEventError,
    InvalidTransitionError,
    NotSuspendableError,
)
from control_plane.core.limits import (
    DEFAULT_MAX_EVENT_BYTES,
    check_encoded,
    check_event_type,
    check_finite,
    too_large,
)
from control_plane.core.protocol import STATE_BY_EVENT, make_event, utc_now_iso
from jobs.lifecycle import JobState, JobStatus, Trigger, next_state

if TYPE_CHECKING:
    from ray import ObjectRef

# Takes each event encoded (``control_plane.core.encoding``) and whether it is urgent.
Emit = Callable[[Encoded, bool], None]

OUTPUT_PREVIEW_CHARS = 2000

# The event that announces each terminal state: the protocol's event → state table read
# backwards (one event per terminal state, so the inversion is exact).
_FINAL_EVENTS = {
    JobState(state): event for event, state in STATE_BY_EVENT.items() if JobState(state).terminal
}


class CancelRequested(BaseException):
    """Raised at a checkpoint once the job is cancelled.

    A ``BaseException`` (like ``asyncio.CancelledError``) so that a body's broad
    ``except Exception`` does not swallow the cancel.
    """


class SuspendRequested(BaseException):
    """Raised at a checkpoint once the job is to be suspended: the body stops there, and a
    new actor starts it again from its last ``ctx.save``. A ``BaseException`` for the same
    reason as :class:`CancelRequested`."""


class Checkpointer(Protocol):
    """Makes a ``ctx.save`` state durable (the job actor's: through the controller's store).
    Each call returns once the state is stored."""

    async def save_async(self, state: Any) -> None: ...

    def save_blocking(self, state: Any) -> None: ...


class _Done:
    """An awaitable that is already finished, so ``ctx.checkpoint()`` works with and without
    ``await``."""

    def __await__(self) -> Generator[None, None, None]:
        return
        yield


_DONE = _Done()


class JobControl:
    """The job's state, its transitions and the events they emit. Thread-safe."""

    def __init__(
        self,
        job_id: str,
        name: str,
        owner: str,
        created_at: str,
        emit: Emit,
        wait_room: Callable[[], None] | None = None,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    ) -> None:
        self.job_id = job_id
        self.max_event_bytes = max_event_bytes
        self.name = name
        self.owner = owner
        self.created_at = created_at
        self.updated_at = created_at
        self.state = JobState.PENDING
        self.progress = 0.0
        self.message: str | None = None
        self.error: str | None = None
        self.forced = False
        self.cancel_requested = False
        self.suspend_requested = False
        # The state the last run saved (None on a first run), and whether this job has a
        # saved state at all (a restored one counts): only then can it be suspended.
        self.restored: Any = None
        self.has_saved = False
        self.checkpointer: Checkpointer | None = None
        self.ended = False  # the run is over and its outcome handed on (the actor's)
        self._emit = emit
        self._progress = ProgressEncoder(job_id)
        # Backpressure for the body: called outside the lock before the body emits, so a
        # slow hub slows the body and never the control calls.
        self._wait_room = wait_room or (lambda: None)
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    # --- events --------------------------------------------------------------------------

    def emit(self, event_type: str, urgent: bool = False, **data: Any) -> None:
        """Encode and queue an event; an event no client could take raises (nothing is sent):
        :class:`InvalidEventError` for a gateway-only type or a NaN/Infinity,
        :class:`EventTooLargeError` over ``max_event_bytes``."""
        check_event_type(event_type)
        payload = {**data, "job_id": self.job_id, "status": self.state.value}
        try:
            encoded = encode_event(make_event(event_type, payload))
        except ValueError as e:  # jsonwire refuses NaN and ±Infinity
            raise InvalidEventError(f"a {event_type} event cannot be sent: {e}") from e
        check_encoded(encoded, self.max_event_bytes)
        self._emit(encoded, urgent)

    def emit_from_body(self, event_type: str, **data: Any) -> None:
        """An event the body makes (agents, custom): dropped once the job has ended."""
        self._wait_room()
        with self._lock:
            if not self.state.terminal:
                self.emit(event_type, **data)

    # --- transitions ---------------------------------------------------------------------

    def _move(self, trigger: Trigger) -> bool:
        """Apply ``trigger`` under the lock; return whether the state changed."""
        new = next_state(self.job_id, self.state, trigger)
        changed = new is not self.state
        self.state = new
        self.updated_at = utc_now_iso()
        if changed:
            self._notify()
        return changed

    def _notify(self) -> None:
        self._cond.notify_all()
        for loop, event in self._waiters:
            loop.call_soon_threadsafe(event.set)

    def status(self) -> JobStatus:
        with self._lock:
            return JobStatus(
                job_id=self.job_id,
                name=self.name,
                state=self.state,
                progress=self.progress,
                message=self.message,
                owner=self.owner,
                created_at=self.created_at,
                updated_at=self.updated_at,
                error=self.error,
                forced=self.forced,
                cancel_requested=self.cancel_requested,
            )

    def start(self) -> None:
        with self._lock:
            if self.state is JobState.CANCELLED or self.cancel_requested:
                raise CancelRequested
            if self.state is not JobState.RUNNING:  # RUNNING: paused and resumed before start
                self._move(Trigger.START)
            self.emit("job.started", urgent=True, name=self.name)

    def pause(self) -> None:
        with self._lock:
            self._move(Trigger.PAUSE)

    def resume(self) -> None:
        with self._lock:
            if self.state is JobState.SUSPENDED:  # its run is over: a new actor resumes it
                raise InvalidTransitionError(self.job_id, self.state.value, "resume")
            self.suspend_requested = False  # a suspend not carried out yet is called off
            was = self.state
            if self._move(Trigger.RESUME) and was is JobState.PAUSED:
                self.emit("job.resumed", urgent=True)

    def request_cancel(self) -> None:
        with self._lock:
            if self.state is JobState.PENDING:
                self._move(Trigger.CANCEL)
                self.emit("job.cancelled", urgent=True, forced=False)
                return
            if self.state is JobState.SUSPENDED:  # its run is over: the controller cancels
                raise InvalidTransitionError(self.job_id, self.state.value, "cancel")
            next_state(self.job_id, self.state, Trigger.CANCEL)  # raises on a finished job
            if not self.state.terminal and not self.cancel_requested:
                self.cancel_requested = True
                self.updated_at = utc_now_iso()
                self._notify()

    def request_suspend(self) -> None:
        """Ask the body to stop at its next checkpoint (:class:`NotSuspendableError` when it
        has nothing saved to resume from)."""
        with self._lock:
            if self.state.terminal or self.state is JobState.SUSPENDED:
                next_state(self.job_id, self.state, Trigger.SUSPEND)  # raises, or a no-op
                return
            if self.state is JobState.PENDING:
                raise InvalidTransitionError(self.job_id, self.state.value, "suspend")
            if not self.has_saved:
                raise NotSuspendableError(self.job_id, self.state.value)
            if not self.suspend_requested:
                self.suspend_requested = True
                self.updated_at = utc_now_iso()
                self._notify()

    def park(self) -> bool:
        """The body stopped for a suspend: move to ``suspended`` and emit ``job.suspended``."""
        with self._lock:
            if self.state.terminal or self.state is JobState.SUSPENDED:
                return False
            self._move(Trigger.PARK)
            self.emit("job.suspended", urgent=True, progress=self.progress)
            return True

    def end(self) -> None:
        """The run is over and its outcome handed on: wake whoever waits for that."""
        with self._lock:
            self.ended = True
            self._notify()

    def saved(self) -> None:
        with self._lock:
            self.has_saved = True

    def finish(self, trigger: Trigger, **data: Any) -> bool:
        """Move to a terminal state and emit its event; False if already finished."""
        with self._lock:
            if self.state.terminal:
                return False
            event_type = _FINAL_EVENTS.get(next_state(self.job_id, self.state, trigger))
            if event_type is None:
                raise ValueError(f"{trigger.value!r} does not finish a job")
            if trigger is Trigger.FAIL:
                self.error = str(data.get("error"))
            if trigger is Trigger.STOPPED:
                self.forced = bool(data.get("forced", False))
            if trigger is Trigger.COMPLETE:
                self.progress = 100.0
            self._move(trigger)
            self.emit(event_type, urgent=True, **data)
            return True

    def set_progress(self, progress: float, message: str | None) -> None:
        progress = min(100.0, max(0.0, check_finite("progress", progress)))
        limit = self.max_event_bytes
        if isinstance(message, str) and len(message) > limit:
            # its JSON has at least as many bytes: refused before it is encoded
            raise too_large(PROGRESS, len(message), limit)
        self._wait_room()
        with self._lock:
            if self.state.terminal:
                return  # a body still running after a forced cancel
            self.progress = progress
            if message is not None:
                self.message = message
            now = self.updated_at = utc_now_iso()
            # The hot path of a busy job: what emit("job.progress", ...) makes, without json.
            try:
                encoded = self._progress.encode(now, self.state.value, progress, message)
            except ValueError as e:  # a message holding a NaN or an Infinity
                raise InvalidEventError(f"a job.progress event cannot be sent: {e}") from e
            check_encoded(encoded, limit)
            self._emit(encoded, False)

    # --- checkpoints ---------------------------------------------------------------------

    def _at_checkpoint(self) -> bool:
        """Act on a pending pause or cancel; return True while the body must stay held."""
        if self.cancel_requested:
            raise CancelRequested
        if self.suspend_requested:
            raise SuspendRequested
        if self.state is JobState.PAUSING:
            self._move(Trigger.HOLD)
            self.emit("job.paused", urgent=True, progress=self.progress)
        return self.state is JobState.PAUSED

    def checkpoint_blocking(self) -> None:
        with self._lock:
            while self._at_checkpoint():
                self._cond.wait()

    async def checkpoint_async(self) -> None:
        if (
            self.state is JobState.RUNNING
            and not self.cancel_requested
            and not self.suspend_requested
        ):
            return  # the common case: nothing asked, no lock, no wait
        while True:
            with self._lock:
                if not self._at_checkpoint():
                    return
            await self.wait_for(
                lambda: (
                    self.state is not JobState.PAUSED
                    or self.cancel_requested
                    or self.suspend_requested
                )
            )

    async def wait_for(self, predicate: Callable[[], bool], timeout: float | None = None) -> bool:
        """Wait on the calling loop until ``predicate()`` holds; False on timeout."""
        loop = asyncio.get_running_loop()
        event = asyncio.Event()
        waiter = (loop, event)
        with self._lock:
            if predicate():
                return True
            self._waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout):
                while True:
                    await event.wait()
                    event.clear()
                    with self._lock:
                        if predicate():
                            return True
        except TimeoutError:
            return False
        finally:
            with self._lock:
                self._waiters.remove(waiter)

    def waiter_count(self) -> int:
        with self._lock:
            return len(self._waiters)


class Agent:
    """An agent scope inside a job: ``started`` on entry, ``completed`` or ``failed`` on exit."""

    def __init__(self, control: JobControl, agent_id: str, name: str) -> None:
        self._control = control
        self.agent_id = agent_id
        self.name = name

    def output(self, text: Any) -> None:
        """Emit an ``agent.output`` preview (long text is cut to a preview)."""
        preview = text if isinstance(text, str) else repr(text)
        if len(preview) > OUTPUT_PREVIEW_CHARS:
            preview = preview[: OUTPUT_PREVIEW_CHARS - 1] + "…"
        self._control.emit_from_body("agent.output", agent_id=self.agent_id, output=preview)

    def _enter(self) -> Agent:
        self._control.emit_from_body("agent.started", agent_id=self.agent_id, name=self.name)
        return self

    def _exit(self, exc: BaseException | None) -> None:
        if exc is None:
            self._control.emit_from_body("agent.completed", agent_id=self.agent_id)
        else:
            if isinstance(exc, CancelRequested | SuspendRequested):
                error = "cancelled" if isinstance(exc, CancelRequested) else "suspended"
            else:
                error = _describe(exc)
            self._control.emit_from_body("agent.failed", agent_id=self.agent_id, error=error)

    def __enter__(self) -> Agent:
        return self._enter()

    def __exit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._exit(exc)

    async def __aenter__(self) -> Agent:
        return self._enter()

    async def __aexit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._exit(exc)


class JobContext:
    """Passed to every job body as its first argument.

    ``await ctx.checkpoint()`` in an ``async def`` body, ``ctx.checkpoint()`` in a plain ``def``
    body (which runs in a thread): a pause waits there, a cancel raises there.
    """

    def __init__(self, control: JobControl, blocking: bool = False) -> None:
        self._control = control
        self._blocking = blocking
        self._agent_ids = itertools.count(1)
        self._tasks: list[ObjectRef[Any]] = []

    @property
    def job_id(self) -> str:
        return self._control.job_id

    @property
    def name(self) -> str:
        return self._control.name

    @property
    def cancelled(self) -> bool:
        """True once a cancel was asked (the next checkpoint will raise)."""
        return self._control.cancel_requested

    def checkpoint(self) -> Awaitable[None]:
        if self._blocking:
            self._control.checkpoint_blocking()
            return _DONE
        return self._control.checkpoint_async()

    @property
    def restored(self) -> Any:
        """The state this job last gave :meth:`save`, when this run continues an earlier one
        (after its actor died, or a suspend); None on a first run."""
        return self._control.restored

    def save(self, state: Any) -> Awaitable[None]:
        """Keep ``state`` (a small JSON- or pickle-able value) for a later run: the next run
        after a lost actor or a suspend finds it in :attr:`restored`. Returns once it is
        stored; ``await ctx.save(s)`` in an ``async def`` body, ``ctx.save(s)`` in a plain
        ``def`` body. A job that has saved can be suspended; it resumes from its last save."""
        checkpointer = self._control.checkpointer
        if checkpointer is None:
            raise RuntimeError("this job runs without a store for its saved state")
        if self._blocking:
            checkpointer.save_blocking(state)
            self._control.saved()
            return _DONE
        return self._save_async(checkpointer, state)

    async def _save_async(self, checkpointer: Checkpointer, state: Any) -> None:
        await checkpointer.save_async(state)
        self._control.saved()

    def progress(self, percent: float, message: str | None = None) -> None:
        """Report progress, 0-100, with an optional message."""
        self._control.set_progress(percent, message)

    def agent(self, name: str) -> Agent:
        """Open an agent scope: ``async with ctx.agent("planner") as a: a.output("...")``."""
        return Agent(self._control, f"{name}-{next(self._agent_ids)}", name)

    def emit(self, event_type: str, **data: Any) -> None:
        """Emit a custom event on this job's channel (``event_type`` like ``app.note``).

        ``job.*``, ``agent.*`` and ``system.*`` belong to the control plane and are refused.
        """
        if event_type.startswith(("job.", "agent.", "system.")):
            raise ValueError(f"{event_type!r} is reserved; use your own prefix, like app.note")
        self._control.emit_from_body(event_type, **data)

    def task(self, remote_function: Any, *args: Any, **kwargs: Any) -> ObjectRef[Any]:
        """Start a Ray task that is cancelled with the job; returns its ObjectRef."""
        ref: ObjectRef[Any] = remote_function.remote(*args, **kwargs)
        self._tasks.append(ref)
        return ref

    def tracked_tasks(self) -> list[ObjectRef[Any]]:
        return list(self._tasks)


def _describe(exc: BaseException, limit: int = 8192) -> str:
    """``Type: message``, cut to ``limit`` characters (it goes into ``job.failed``, which
    must stay under the event size limit)."""
    text = str(exc)
    described = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return described if len(described) <= limit else described[: limit - 1] + "…"


def result_preview(value: Any, limit: int = 8192) -> Any:
    """The result as it goes into ``job.completed``: itself if small JSON, else a repr."""
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        text = None
    if text is not None and len(text) <= limit:
        return value
    rep = repr(value)
    return rep if len(rep) <= limit else rep[: limit - 1] + "…"


describe_error = _describe
