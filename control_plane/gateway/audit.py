"""The audit trail: every command and every refusal, who, what, when and the outcome.

Each record is a log line (logger ``control_plane.audit``, one JSON object per line) and an
``audit.record`` event on the admin-only ``audit`` channel. Records are batched into one hub
publish every :data:`FLUSH_INTERVAL` (a flood of refused handshakes costs one publish per
interval, not one each), and a trail that cannot keep up drops its oldest unpublished
records, counting them, rather than grow. Records never hold a token: callers pass what was
asked and the principal's subject.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from control_plane.core.protocol import AUDIT_CHANNEL, make_event

logger = logging.getLogger("control_plane.audit")

FLUSH_INTERVAL = 0.25
MAX_PENDING = 10_000
Publish = Callable[[list[dict[str, Any]]], Awaitable[Any]]


class AuditTrail:
    def __init__(self, publish: Publish | None, replica: str = "") -> None:
        self._publish = publish
        self._replica = replica
        self._pending: deque[dict[str, Any]] = deque(maxlen=MAX_PENDING)
        self._flusher: asyncio.Task[None] | None = None
        self.recorded = 0
        self.dropped = 0

    def record(
        self,
        who: str,
        action: str,
        outcome: str,
        *,
        job_id: str | None = None,
        client_id: str | None = None,
        detail: str | None = None,
        via: str = "socket",
    ) -> None:
        """One record: ``outcome`` is ``ok``, or the error code (``forbidden``,
        ``unauthorized``, ``job_not_found``...)."""
        data: dict[str, Any] = {"who": who, "action": action, "outcome": outcome, "via": via}
        if job_id is not None:
            data["job_id"] = job_id
        if client_id is not None:
            data["client_id"] = client_id
        if detail:
            data["detail"] = detail[:300]
        if self._replica:
            data["replica"] = self._replica
        self.recorded += 1
        logger.info(json.dumps(data, sort_keys=True))
        if self._publish is None:
            return
        if len(self._pending) == MAX_PENDING:
            self.dropped += 1
        event = make_event("audit.record", data)
        event["channel"] = AUDIT_CHANNEL
        self._pending.append(event)
        if self._flusher is None or self._flusher.done():
            try:
                self._flusher = asyncio.get_running_loop().create_task(self._flush_soon())
            except RuntimeError:  # no loop (a test calling from sync code): log only
                self._pending.clear()

    async def _flush_soon(self) -> None:
        await asyncio.sleep(FLUSH_INTERVAL)
        await self.flush()

    async def flush(self) -> None:
        if not self._pending or self._publish is None:
            return
        batch = list(self._pending)
        self._pending.clear()
        try:
            await self._publish(batch)
        except Exception:
            logger.warning("publishing %d audit records failed", len(batch), exc_info=True)
