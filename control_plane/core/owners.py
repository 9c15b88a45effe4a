"""Which owner each job has, as a gateway replica knows it, and who may receive an entry.
No Ray here.

A replica decides per entry whether a socket's principal may see it, so it must know the
owner of every job whose events it hands out. It learns them from the controller once (every
job registered so far) and then from the hub itself: its reader always takes the ``jobs``
channel, so each ``job.created`` (which names the owner, and comes before any other event of
the job) reaches every replica. A job it does not know is visible to admins only.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping

from control_plane.core.hub_log import LogEntry
from control_plane.core.principals import Principal
from control_plane.core.protocol import AUDIT_CHANNEL, JOB_CHANNEL_PREFIX

CREATED = "job.created"


class JobOwners:
    """job id -> owner."""

    def __init__(self) -> None:
        self._owners: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self._owners)

    def get(self, job_id: str) -> str | None:
        return self._owners.get(job_id)

    def learn(self, owners: Mapping[str, str]) -> None:
        self._owners.update(owners)

    def learn_entries(self, entries: Iterable[LogEntry]) -> None:
        """Take the owner of each ``job.created`` among ``entries``."""
        for entry in entries:
            if entry.type == CREATED:
                self._learn_frame(entry.frame)

    def _learn_frame(self, frame: str) -> None:
        try:
            data = json.loads(frame).get("data") or {}
        except ValueError:
            return
        job_id, owner = data.get("job_id"), data.get("owner")
        if isinstance(job_id, str) and isinstance(owner, str):
            self._owners[job_id] = owner

    def owner_of_channel(self, channel: str) -> str | None:
        return self._owners.get(channel[len(JOB_CHANNEL_PREFIX) :])


def may_receive(principal: Principal, entry: LogEntry, owners: JobOwners) -> bool:
    """Whether ``principal`` may be given ``entry``: a job's events only if it may see the
    job's owner, the ``audit`` channel only if admin, everything else (``system``,
    broadcasts, its own ``send_to_client`` events, which routing gives to it alone)."""
    if principal.is_admin:
        return True
    channel = entry.channel
    if channel.startswith(JOB_CHANNEL_PREFIX):
        return principal.may_see_owner(owners.owner_of_channel(channel))
    return channel != AUDIT_CHANNEL
