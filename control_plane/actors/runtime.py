"""The Ray glue: namespace, actor names and options, connecting, and finding our actors.

Every long-lived actor of the control plane lives in the ``control_plane`` namespace under a
fixed name and is detached, so that jobs and their events belong to the cluster rather than
to the driver that started them, and any driver on the cluster finds them by name.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import ray
from ray.actor import ActorHandle

from control_plane.core.errors import HubUnavailableError
from control_plane.observability import logs

logger = logging.getLogger(__name__)

NAMESPACE = "control_plane"
HUB_NAME = "control_plane.hub"
CONTROLLER_NAME = "control_plane.controller"
JOB_NAME_PREFIX = "control_plane.job."
SERVE_APP_NAME = "control_plane"


def job_actor_name(job_id: str) -> str:
    return JOB_NAME_PREFIX + job_id


def ensure_ray(address: str | None = None) -> bool:
    """Connect to Ray if this process is not connected yet; return True if we started it.

    ``address`` (or ``RAY_ADDRESS``) attaches to an existing cluster; with neither we start
    a new local Ray with ``address="local"`` so that a stale record of an old cluster is
    never followed.
    """
    if ray.is_initialized():
        return False
    target = address or os.environ.get("RAY_ADDRESS")
    if target:
        ray.init(address=target, logging_level=logging.WARNING)
        return False
    ray.init(address="local", logging_level=logging.WARNING, include_dashboard=False)
    return True


def get_actor(name: str) -> ActorHandle | None:
    try:
        return ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:
        return None


def hub() -> ActorHandle:
    """The EventHub actor's handle, or :class:`HubUnavailableError`."""
    handle = get_actor(HUB_NAME)
    if handle is None:
        raise HubUnavailableError(
            "the EventHub actor is not running: call control_plane.start() first"
        )
    return handle


def controller() -> ActorHandle:
    handle = get_actor(CONTROLLER_NAME)
    if handle is None:
        raise HubUnavailableError(
            "the job controller actor is not running: call control_plane.start() first"
        )
    return handle


HEAD_NODE_RESOURCE = "node:__internal_head__"  # Ray's resource on the head node only


def singleton_options(name: str) -> dict[str, Any]:
    """Options for the hub and the controller: named, detached, restarted when they die,
    and on the head node, so that losing a worker node loses neither."""
    return {
        "name": name,
        "namespace": NAMESPACE,
        "lifetime": "detached",
        "get_if_exists": True,
        "num_cpus": 0,
        "max_restarts": -1,
        "max_task_retries": -1,
        "max_concurrency": 10_000,
        "resources": {HEAD_NODE_RESOURCE: 0.001},
        **logs.actor_env(),  # the log format, metrics switch and OTEL_* settings, if set
    }
