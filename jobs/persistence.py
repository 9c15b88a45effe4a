"""The job actor's side of the controller's store: saved states and the run's outcome.

Both go to the controller actor, the one writer of the registry's database
(``control_plane/core/registry_store.py``). The controller is detached and restarted by Ray
(``max_restarts=-1``, ``max_task_retries=-1``), so a call made while it is down is retried by
Ray once it is back; the loop here adds patience for the moments Ray reports it unreachable.
A ``ctx.save`` therefore returns once the state is stored, and a run's outcome is stored
before ``execute`` returns, also when the controller died meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import ray
from ray import cloudpickle
from ray.exceptions import RayActorError

from jobs.lifecycle import JobStatus

logger = logging.getLogger(__name__)

HAND_OVER_PATIENCE = 600.0  # seconds a finished job waits for a controller that is down
RETRY_DELAY = 0.5


class StoreCheckpointer:
    """``ctx.save``: the state pickled here, stored by the controller."""

    def __init__(self, job_id: str, controller: Any) -> None:
        self._job_id = job_id
        self._controller = controller

    async def save_async(self, state: Any) -> None:
        blob = cloudpickle.dumps(state)
        await _patiently(lambda: self._controller.save_checkpoint.remote(self._job_id, blob))

    def save_blocking(self, state: Any) -> None:
        blob = cloudpickle.dumps(state)
        deadline = time.monotonic() + HAND_OVER_PATIENCE
        while True:
            try:
                ray.get(self._controller.save_checkpoint.remote(self._job_id, blob))
                return
            except RayActorError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(RETRY_DELAY)


async def hand_over(
    controller: Any, job_id: str, kind: str, payload: Any, status: JobStatus
) -> None:
    """Give the controller the run's outcome (``value``, ``error`` or ``suspended``) and the
    job's final status; return once it has stored them."""
    actor_id = ray.get_runtime_context().get_actor_id() or ""
    try:
        await _patiently(
            lambda: controller.job_finished.remote(job_id, kind, payload, status, actor_id)
        )
    except RayActorError:
        logger.error("job %s: the controller did not take its outcome; it is lost", job_id)


async def _patiently(call: Any) -> Any:
    deadline = time.monotonic() + HAND_OVER_PATIENCE
    while True:
        try:
            return await call()
        except RayActorError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(RETRY_DELAY)
