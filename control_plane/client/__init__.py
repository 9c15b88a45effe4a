"""The Python client SDK (no Ray needed): :class:`ControlPlaneClient` (async) and
:class:`SyncControlPlaneClient` (blocking)."""

from control_plane.client.async_client import ConnectionState, ControlPlaneClient
from control_plane.client.errors import (
    CommandRejected,
    ConnectionLost,
    Forbidden,
    JobNotFound,
    RequestTimeout,
    TransitionRejected,
    Unauthorized,
)
from control_plane.client.sync_client import SyncControlPlaneClient

__all__ = [
    "CommandRejected",
    "ConnectionLost",
    "ConnectionState",
    "ControlPlaneClient",
    "Forbidden",
    "JobNotFound",
    "RequestTimeout",
    "SyncControlPlaneClient",
    "TransitionRejected",
    "Unauthorized",
]
