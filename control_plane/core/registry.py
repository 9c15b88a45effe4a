"""The job registry core: what the controller knows of every job. No Ray here.

The registry is fed by the hub's own events (``job.*``), so it agrees with what clients see;
the controller actor (``controller_actor.py``) adds the actor handles and results.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from control_plane.core.protocol import STATE_BY_EVENT
from control_plane.core.registry_store import StoredJob
from jobs.lifecycle import JobState, JobStatus

RECENT_OUTPUTS = 10

# The protocol's one table, as JobState members (an unknown state fails here, at import).
_STATE_BY_EVENT = {event: JobState(state) for event, state in STATE_BY_EVENT.items()}


@dataclass
class JobRecord:
    job_id: str
    name: str
    owner: str
    created_at: str
    state: JobState = JobState.PENDING
    progress: float = 0.0
    message: str | None = None
    updated_at: str = ""
    error: str | None = None
    forced: bool = False
    last_change: float = field(default_factory=time.monotonic)
    stall_alerted: bool = False
    last_seq: int = 0
    restarts: int = 0  # new actors made after the job's actor died
    agents: dict[str, dict[str, Any]] = field(default_factory=dict)
    outputs: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=RECENT_OUTPUTS))

    def snapshot(self) -> dict[str, Any]:
        """What ``job.snapshot`` carries: enough for a fresh page to draw the job."""
        return {
            **self.status().model_dump(mode="json"),
            "status": self.state.value,
            "agents": list(self.agents.values()),
            "recent_outputs": list(self.outputs),
            "seq": self.last_seq,
        }

    def status(self) -> JobStatus:
        return JobStatus(
            job_id=self.job_id,
            name=self.name,
            state=self.state,
            progress=self.progress,
            message=self.message,
            owner=self.owner,
            created_at=self.created_at,
            updated_at=self.updated_at or self.created_at,
            error=self.error,
            forced=self.forced,
        )


def record_from_stored(job: StoredJob) -> JobRecord:
    """A job's record as the store kept it (a restarted controller's registry)."""
    return JobRecord(
        job.job_id,
        job.name,
        job.owner,
        job.created_at,
        state=JobState(job.state),
        progress=job.progress,
        message=job.message,
        updated_at=job.updated_at,
        error=job.error,
        forced=job.forced,
        restarts=job.restarts,
    )


def stored_state(
    record: JobRecord, status: JobStatus | None = None, spec: bytes = b""
) -> StoredJob:
    """The store's row for ``record`` (its state columns from ``status`` when given)."""
    now = status or record.status()
    return StoredJob(
        record.job_id,
        record.name,
        record.owner,
        record.created_at,
        spec,
        state=now.state.value,
        progress=now.progress,
        message=now.message,
        updated_at=now.updated_at,
        error=now.error,
        forced=now.forced,
        restarts=record.restarts,
    )


class JobRegistry:
    """job id → :class:`JobRecord`, updated from hub events. Bounded in finished jobs."""

    def __init__(self, max_finished: int = 10_000) -> None:
        self._records: dict[str, JobRecord] = {}
        self._max_finished = max_finished

    def add(self, record: JobRecord) -> None:
        self._records[record.job_id] = record
        self._trim()

    def get(self, job_id: str) -> JobRecord | None:
        return self._records.get(job_id)

    def remove(self, job_id: str) -> None:
        self._records.pop(job_id, None)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._records

    def __len__(self) -> int:
        return len(self._records)

    def records(self) -> list[JobRecord]:
        return list(self._records.values())

    def apply_frame(self, frame: str) -> JobRecord | None:
        """Apply one hub frame (JSON text); frames not about jobs or agents are ignored."""
        return self.apply(json.loads(frame))

    def apply(self, event: dict[str, Any]) -> JobRecord | None:
        event_type = event.get("type", "")
        data = event.get("data") or {}
        record = self._records.get(data.get("job_id", ""))
        if record is None:
            return None
        record.last_seq = max(record.last_seq, int(event.get("seq") or 0))
        if event_type.startswith("agent."):
            self._apply_agent(record, event_type, data, event.get("timestamp", ""))
            return record
        if not event_type.startswith("job."):
            return None
        record.updated_at = event.get("timestamp", record.updated_at)
        record.last_change = time.monotonic()
        record.stall_alerted = False
        if event_type == "job.progress":
            if record.state.terminal:
                return record
            record.progress = float(data.get("progress", record.progress))
            if data.get("message") is not None:
                record.message = data["message"]
            return record
        state = _STATE_BY_EVENT.get(event_type)
        if state is None or record.state.terminal:
            return record
        record.state = state
        if state is JobState.COMPLETED:
            record.progress = 100.0
        if event_type == "job.failed":
            record.error = data.get("error")
        if event_type == "job.cancelled":
            record.forced = bool(data.get("forced", False))
        if event_type == "job.restarted":
            record.restarts = max(record.restarts, int(data.get("attempt", 0)))
        self._trim()
        return record

    @staticmethod
    def _apply_agent(
        record: JobRecord, event_type: str, data: dict[str, Any], timestamp: str
    ) -> None:
        agent_id = str(data.get("agent_id", ""))
        agent = record.agents.setdefault(
            agent_id, {"agent_id": agent_id, "name": data.get("name", agent_id), "state": ""}
        )
        agent["state"] = event_type.removeprefix("agent.")
        if event_type == "agent.output":
            entry = {"agent_id": agent_id, "output": data.get("output", ""), "at": timestamp}
            record.outputs.append(entry)
        elif event_type == "agent.failed":
            agent["error"] = data.get("error")

    def counts(self) -> dict[str, int]:
        counter = Counter(r.state.value for r in self._records.values())
        return {state.value: counter.get(state.value, 0) for state in JobState}

    def stalled(self, now: float, after: float) -> list[JobRecord]:
        """Running jobs with no event for ``after`` seconds, not yet alerted."""
        return [
            r
            for r in self._records.values()
            if r.state is JobState.RUNNING and not r.stall_alerted and now - r.last_change > after
        ]

    def _trim(self) -> None:
        finished = [r for r in self._records.values() if r.state.terminal]
        excess = len(finished) - self._max_finished
        for record in finished[: max(0, excess)]:
            del self._records[record.job_id]


class IdempotencyCache:
    """Remembers the outcome of recent commands by key, so a command sent twice (a client
    retrying after a reconnect) is applied once and answered twice. Bounded in count
    (``size``) and in the bytes of its keys (``max_bytes``, each key counted with
    :data:`ENTRY_OVERHEAD`: a key is a client id and a request id, which clients choose);
    oldest first out.
    """

    ENTRY_OVERHEAD = 256  # bytes an entry costs beyond its key's characters (dict, future)

    def __init__(self, size: int = 10_000, max_bytes: int = 4 * 1024 * 1024) -> None:
        self._size = size
        self._max_bytes = max_bytes
        self._entries: OrderedDict[tuple[str, str], asyncio.Future[Any]] = OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def _cost(self, key: tuple[str, str]) -> int:
        return len(key[0]) + len(key[1]) + self.ENTRY_OVERHEAD

    async def run(self, key: tuple[str, str], action: Callable[[], Awaitable[Any]]) -> Any:
        """Run ``action`` once per key; later calls with the key get the same outcome.

        The action runs in its own task, so a caller that goes away (its socket closed)
        does not cancel it for the retry that comes after the reconnect.
        """
        task = self._entries.get(key)
        if task is None:
            task = asyncio.ensure_future(action())
            task.add_done_callback(_retrieve)
            self._entries[key] = task
            self.bytes += self._cost(key)
            while len(self._entries) > 1 and (
                len(self._entries) > self._size or self.bytes > self._max_bytes
            ):
                old, _ = self._entries.popitem(last=False)
                self.bytes -= self._cost(old)
        return await asyncio.shield(task)


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # marks it retrieved; callers get it through await
