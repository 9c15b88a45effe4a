"""Where the control plane keeps what must outlive its processes (on the head node).

The hub's event log and the controller's registry are files in one directory:

* ``--state-dir PATH`` (``control_plane.start(state_dir=...)``), else
* ``CONTROL_PLANE_STATE_DIR`` in the head node's environment, else
* ``control_plane/`` in the Ray session's directory (``/tmp/ray/session_<id>/``): it
  outlives every restart of the hub, the controller and the gateway, and goes with the
  cluster. Put it on a persistent volume (with Ray's GCS fault tolerance) for state that
  outlives the head node.

The path is resolved inside the actors, which run on the head node, so a relative or
``~`` path means the head node's, not the submitting machine's.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "CONTROL_PLANE_STATE_DIR"
EVENTS_FILE = "events.sqlite3"
REGISTRY_FILE = "registry.sqlite3"


def session_dir() -> Path:
    """This Ray node's session directory (Ray has no public call for it)."""
    from ray._private.worker import global_worker

    node = global_worker.node
    assert node is not None, "not connected to Ray"
    return Path(node.get_session_dir_path())


def resolve(state_dir: str | None) -> Path:
    """The state directory for ``state_dir`` (None: the default above), created."""
    chosen = state_dir or os.environ.get(ENV_VAR)
    path = Path(chosen).expanduser() if chosen else session_dir() / "control_plane"
    path.mkdir(parents=True, exist_ok=True)
    return path.resolve()
