"""``control-plane serve`` stops within 10 s however it is told, and leaves no Ray behind.

Each case starts the console script in a process group of its own, with its own local Ray
under a temporary directory of its own (``RAY_TMPDIR``), so the Ray processes it started are
those whose command line names that directory, and the session's Ray is not touched.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator

import psutil
import pytest

from tests.conftest import free_port
from tests.integration.test_cli import _script

pytestmark = pytest.mark.ray

STOP_WITHIN = 10.0  # what the service promises (the bound, not a speed target)
READY_WITHIN = 180.0


def _ray_processes(tmp: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        with_tmp = any(tmp in part for part in proc.info["cmdline"] or ())
        if with_tmp and proc.pid != os.getpid():
            found.append(proc)
    return found


@pytest.fixture
def ray_tmp() -> Iterator[str]:
    # Short: Ray's socket paths under it must stay within the 107 bytes of a Unix socket.
    tmp = tempfile.mkdtemp(prefix="cp-stop-", dir="/tmp")
    yield tmp
    for proc in _ray_processes(tmp):  # whatever a failed case left, so the next can run
        proc.kill()
    shutil.rmtree(tmp, ignore_errors=True)


def _start(tmp: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_TMPDIR"] = tmp
    proc = subprocess.Popen(
        [_script(), "serve", "--port", str(free_port()), "--token", "stop-test"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,  # its own process group, as a terminal or systemd gives it
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + READY_WITHIN
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "control plane ready" in line:
            return proc
        assert time.monotonic() < deadline, "".join(lines)
    raise AssertionError(f"serve ended before it was ready: {''.join(lines)[-3000:]}")


def _signal(proc: subprocess.Popen[str], how: str) -> None:
    if how == "SIGTERM to its process":
        proc.send_signal(signal.SIGTERM)
    elif how == "SIGINT to its group":  # Ctrl-C
        os.killpg(proc.pid, signal.SIGINT)
    elif how == "SIGTERM to its group":  # timeout(1), kill -- -PGID
        os.killpg(proc.pid, signal.SIGTERM)
    else:  # systemd's KillMode=control-group: every process of the service, Ray's too
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        for member in family:
            with contextlib.suppress(psutil.NoSuchProcess):
                member.send_signal(signal.SIGTERM)


@pytest.mark.parametrize(
    "how",
    [
        "SIGTERM to its process",
        "SIGINT to its group",
        "SIGTERM to its group",
        "SIGTERM to every process of it",
    ],
)
def test_serve_stops_within_ten_seconds_and_leaves_no_ray_process(ray_tmp: str, how: str) -> None:
    proc = _start(ray_tmp)
    assert _ray_processes(ray_tmp), "the service's own Ray should be running"
    told = time.monotonic()
    _signal(proc, how)
    try:
        rest, _ = proc.communicate(timeout=STOP_WITHIN)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        rest, _ = proc.communicate()
        raise AssertionError(
            f"still running {STOP_WITHIN:g} s after {how}: {rest[-3000:]}"
        ) from None
    took = time.monotonic() - told
    assert proc.returncode == 0, rest[-3000:]
    assert "stopped" in rest
    _, alive = psutil.wait_procs(_ray_processes(ray_tmp), timeout=max(0.1, STOP_WITHIN - took))
    assert not alive, [p.info["cmdline"][:2] for p in alive]
