"""The cores stay free of Ray and FastAPI, so these unit tests run in milliseconds."""

from __future__ import annotations

import subprocess
import sys

CORES = [
    "control_plane.protocol",
    "control_plane.errors",
    "control_plane.hub",
    "control_plane.routing",
    "control_plane.emitter",
    "control_plane.controller",
    "control_plane.system",
    "control_plane.auth",
    "jobs.lifecycle",
    "jobs.context",
    "jobs",
]


def test_the_cores_import_neither_ray_nor_fastapi():
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in CORES)
        + "heavy = sorted(m for m in ('ray', 'fastapi', 'starlette') if m in sys.modules)\n"
        + "print(','.join(heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == ""
