"""``control-plane serve`` as a service: it stops within seconds however it is told.

A signal to the whole process group (Ctrl-C in a terminal, ``timeout``, systemd's default
``KillMode=control-group``) reaches every process in it. When ``ray.init`` started a local
Ray, its processes (the GCS first) would die at the same moment as ours, and the orderly
stop that follows waits a minute for a GCS that is gone. So the command runs in two
processes:

* the **supervisor**, the one the user started, stays in the caller's process group: it
  starts the server in a session of its own, passes the first SIGINT/SIGTERM on to it, and
  kills the server's whole session if it has not stopped in time;
* the **server** (the same command, marked by :data:`SUPERVISED`) starts Ray and the control
  plane, and stops them when told, within :data:`STOP_DEADLINE`: if Ray is already going
  (every process was signalled, as systemd's default does), it kills what is left of its
  local Ray instead of waiting for it.

The server dies with its supervisor (``PR_SET_PDEATHSIG`` on Linux), so a supervisor that
is killed outright leaves nothing running either.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence

logger = logging.getLogger(__name__)

SUPERVISED = "CONTROL_PLANE_SUPERVISED"  # set in the server's environment
STOP_DEADLINE = 7.0  # seconds the server gives its orderly stop
KILL_AFTER = 9.0  # seconds after the signal the supervisor kills the server's session
PR_SET_PDEATHSIG = 1


def supervised() -> bool:
    """Whether this process is the server that a supervisor started."""
    return os.environ.get(SUPERVISED) == "1"


def supervise(argv: Sequence[str]) -> int:
    """Run ``control-plane <argv>`` as the server in its own session; return its exit code."""
    env = {**os.environ, SUPERVISED: "1"}
    command = [sys.executable, "-m", "control_plane.cli", *argv]
    server = subprocess.Popen(command, env=env, start_new_session=True)
    told: list[float] = []  # when the first signal came

    def forward(signum: int, _frame: object) -> None:
        if not told:
            told.append(time.monotonic())
            with contextlib.suppress(ProcessLookupError):
                server.send_signal(signal.SIGTERM)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, forward)
    while True:
        with contextlib.suppress(subprocess.TimeoutExpired):
            return server.wait(timeout=0.2)
        if told and time.monotonic() - told[0] > KILL_AFTER:
            logger.warning("the server did not stop in %g s: killing it", KILL_AFTER)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGKILL)
            return server.wait()


def die_with_parent() -> None:
    """Ask Linux to SIGTERM this process when its parent (the supervisor) dies."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() == 1:  # the supervisor died before we asked
        os.kill(os.getpid(), signal.SIGTERM)


def stop_within(stop: Callable[[], None], deadline: float = STOP_DEADLINE) -> bool:
    """Run ``stop`` (the orderly stop); after ``deadline`` seconds give up on it and kill
    the local Ray this process started. True when the orderly stop finished."""
    worker = threading.Thread(target=stop, name="stop", daemon=True)
    worker.start()
    worker.join(deadline)
    if not worker.is_alive():
        return True
    logger.warning("the orderly stop took over %g s (Ray is going too): killing it", deadline)
    kill_local_ray()
    return False


def kill_local_ray() -> None:
    """Kill the Ray processes that ``ray.init`` started in this process, if it did."""
    from ray._private import worker

    node = getattr(worker, "_global_node", None)
    if node is not None and node.head:
        with contextlib.suppress(Exception):
            node.kill_all_processes(check_alive=False, allow_graceful=False, wait=True)


def exit_now(code: int) -> None:
    """End the server now, its output flushed: Ray's exit hooks would wait on what the stop
    already ended."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)
