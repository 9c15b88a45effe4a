"""CPU priority: the control plane's processes run ahead of job bodies when the CPUs are full.

Ray starts every worker process at nice 15 (its raylet and GCS run at 0), so the hub, the
controller, the gateway replicas and the jobs' bodies all share the CPUs alike. When jobs
fill them, every hop of a pause (gateway → controller → job actor → hub → gateway) waits for
a core behind the bodies: on 2 CPUs under a 50,000 events/s load a call to the hub took
51 ms at p50 (4 ms idle) and a pause round trip 116 ms. The two settings here are the
OS's answer to that, as Ray gives its own daemons a better nice value than its workers:

- :func:`favour_process` puts every thread of a control-plane actor's process at
  ``CONTROL_NICE`` (0, like the raylet): the hub's, the controller's, each gateway
  replica's, and each job actor's, whose control calls and event emitter are the control
  plane's too. Lowering a nice value needs ``CAP_SYS_NICE`` (root; in a systemd unit
  ``AmbientCapabilities=CAP_SYS_NICE``), or an ``RLIMIT_NICE`` that allows it
  (``ulimit -e 20`` in the shell that starts Ray). Without it the process stays where Ray put it
  and says so once in its log. ``CONTROL_PLANE_NICE`` in the actors' environment sets
  another value, or ``off``.
- :func:`yield_thread` puts the thread that runs a job's body at ``JobOptions.body_nice``
  (19 by default); any process may raise its own threads' nice value. Threads the body
  starts inherit it.

With both, the same load gave 5 ms for a call to the hub, 10 ms to the controller, 6 ms to
a job actor, and a pause round trip of 34 ms at p50 (10 ms idle): what is left is the
paused body reaching its checkpoint among the loading bodies, at the same nice value.

Linux only (a nice value is per thread there); elsewhere both do nothing.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading

logger = logging.getLogger(__name__)

ENV_VAR = "CONTROL_PLANE_NICE"
CONTROL_NICE = 0  # the control-plane actors' nice value (Ray's raylet and GCS run at 0)
BODY_NICE = 19  # a job body's (the lowest priority)
TASKS = "/proc/self/task"


def supported() -> bool:
    return sys.platform.startswith("linux") and os.path.isdir(TASKS)


def parse_nice(text: str | None, default: int | None = CONTROL_NICE) -> int | None:
    """``CONTROL_PLANE_NICE``'s value: a nice value (-20..19), ``off`` (None: leave it), or
    unset (``default``). Anything else raises ValueError naming the variable."""
    if text is None or not text.strip():
        return default
    text = text.strip().lower()
    if text in ("off", "none", "no"):
        return None
    try:
        nice = int(text)
    except ValueError:
        nice = None
    if nice is None or not -20 <= nice <= 19:
        raise ValueError(f"{ENV_VAR} is a nice value from -20 to 19 or 'off', got {text!r}")
    return nice


def may_lower() -> bool:
    """Whether this process may lower a nice value (a child tries: 1, then back to 0)."""
    if not supported():
        return False
    code = "import os; os.setpriority(os.PRIO_PROCESS, 0, 1); os.setpriority(os.PRIO_PROCESS, 0, 0)"
    return subprocess.run([sys.executable, "-c", code], check=False, timeout=60).returncode == 0


def thread_nice(tid: int | None = None) -> int:
    """The nice value of a thread of this process (this thread by default)."""
    return os.getpriority(os.PRIO_PROCESS, tid if tid is not None else threading.get_native_id())


def favour_process(nice: int | None = None) -> bool:
    """Put every thread of this process at ``nice`` (default: ``CONTROL_PLANE_NICE``, else
    ``CONTROL_NICE``); threads started later inherit it from the one that starts them. True
    when every thread is there (or already was); False, logged, when the OS refused."""
    if not supported():
        return False
    try:
        wanted = parse_nice(os.environ.get(ENV_VAR)) if nice is None else nice
    except ValueError as e:
        logger.warning("%s: left at Ray's priority", e)
        return False
    if wanted is None:
        return False
    refused = 0
    for name in os.listdir(TASKS):
        tid = int(name)
        try:
            if thread_nice(tid) != wanted:
                os.setpriority(os.PRIO_PROCESS, tid, wanted)
        except ProcessLookupError:  # the thread ended meanwhile
            continue
        except PermissionError:
            refused += 1
    if refused:
        logger.info(
            "this process may not lower its nice value to %d (it needs CAP_SYS_NICE or "
            "RLIMIT_NICE, see core/priority.py): it stays at %d, beside the jobs",
            wanted,
            thread_nice(),
        )
        return False
    return True


def yield_thread(nice: int | None) -> bool:
    """Raise this thread's nice value to ``nice`` (never lower it: that needs privilege and
    is not what a job body asks for). None leaves it. True when it is there."""
    if nice is None or not supported():
        return False
    current = thread_nice()
    if current >= nice:
        return current == nice
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except OSError:
        return False
    return True
