"""The Python client SDK (no Ray needed): :class:`ControlPlaneClient` (async) and
:class:`SyncControlPlaneClient` (blocking)."""

from control_plane.client.async_client import (
    CommandRejected,
    ConnectionLost,
    ConnectionState,
    ControlPlaneClient,
    JobNotFound,
    RequestTimeout,
    SyncControlPlaneClient,
    TransitionRejected,
    Unauthorized,
)

__all__ = [
    "CommandRejected",
    "ConnectionLost",
    "ConnectionState",
    "ControlPlaneClient",
    "JobNotFound",
    "RequestTimeout",
    "SyncControlPlaneClient",
    "TransitionRejected",
    "Unauthorized",
]
