"""The job registry core: what the controller knows of every job. No Ray here.

The registry is fed by the hub's own events (``job.*``), so it agrees with what clients see;
the controller actor (``controller_actor.py``) adds the actor handles and results.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from jobs.lifecycle import JobState, JobStatus

_STATE_BY_EVENT = {
    "job.created": JobState.PENDING,
    "job.started": JobState.RUNNING,
    "job.paused": JobState.PAUSED,
    "job.resumed": JobState.RUNNING,
    "job.completed": JobState.COMPLETED,
    "job.failed": JobState.FAILED,
    "job.cancelled": JobState.CANCELLED,
}


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

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._records

    def __len__(self) -> int:
        return len(self._records)

    def records(self) -> list[JobRecord]:
        return list(self._records.values())

    def apply_frame(self, frame: str) -> JobRecord | None:
        """Apply one hub frame (JSON text); frames that are not ``job.*`` are ignored."""
        if '"type":"job.' not in frame[:40] and '"type": "job.' not in frame[:40]:
            return None
        return self.apply(json.loads(frame))

    def apply(self, event: dict[str, Any]) -> JobRecord | None:
        event_type = event.get("type", "")
        data = event.get("data") or {}
        record = self._records.get(data.get("job_id", ""))
        if record is None or not event_type.startswith("job."):
            return None
        record.updated_at = event.get("timestamp", record.updated_at)
        record.last_change = time.monotonic()
        record.stall_alerted = False
        if event_type == "job.progress":
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
        self._trim()
        return record

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
