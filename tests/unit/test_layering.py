"""The cores stay free of Ray and FastAPI, so these unit tests run in milliseconds.

The list of cores is not kept by hand: every module of ``control_plane.core`` is imported,
plus the job-side cores in ``jobs`` that the actor shell wraps."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import control_plane.core

JOB_CORES = ["jobs", "jobs.lifecycle", "jobs.context", "control_plane.gateway.auth"]


def core_modules() -> list[str]:
    return sorted(
        info.name
        for info in pkgutil.walk_packages(control_plane.core.__path__, "control_plane.core.")
    )


def test_the_core_package_is_walked_whole() -> None:
    found = core_modules()
    for expected in ("hub_log", "heartbeat", "outbox", "ordering", "routing", "protocol"):
        assert f"control_plane.core.{expected}" in found


def test_the_cores_import_neither_ray_nor_fastapi() -> None:
    modules = [*core_modules(), *JOB_CORES]
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in modules)
        + "heavy = sorted(m for m in ('ray', 'fastapi', 'starlette') if m in sys.modules)\n"
        + "print(','.join(heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == ""
