"""The deployment files: Ray's own schema accepts the cluster files, and every command they
(and the systemd unit) run parses with the console script's own parser."""

from __future__ import annotations

import configparser
import copy
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from control_plane.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_FILES = ["ray_cluster.yaml", "deploy/local-cluster.yaml"]


def _cluster(name: str) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load((ROOT / name).read_text())
    return config


@pytest.mark.parametrize("name", CLUSTER_FILES)
def test_the_cluster_file_passes_rays_own_validation(name: str) -> None:
    # What `ray up` does with it: fill in the provider's defaults, then validate.
    validate_config(prepare_config(copy.deepcopy(_cluster(name))))


def test_a_misspelt_field_fails_that_validation() -> None:
    config = _cluster("ray_cluster.yaml")
    config["head_start_commands"] = config.pop("head_start_ray_commands")
    with pytest.raises(Exception, match="head_start_commands"):
        validate_config(prepare_config(config))


def test_both_cluster_files_start_ray_and_the_control_plane_the_same_way() -> None:
    aws, local = (_cluster(name) for name in CLUSTER_FILES)
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        assert aws[key] == local[key], key
    head = " ".join(aws["head_start_ray_commands"])
    assert "RAY_AUTH_MODE=token ray start --head" in head  # Ray's token auth on
    assert "--dashboard-host=127.0.0.1" in head  # Ray's dashboard not on the network
    assert "deploy/head-start.sh" in head
    for config in (aws, local):
        mounts = config["file_mounts"]
        assert mounts["~/control-plane"] == "."  # the checkout: the version deployed
        assert "~/.control_plane/token" in mounts and "~/.ray/auth_token" in mounts
        assert any("pip install" in c and "~/control-plane" in c for c in config["setup_commands"])


@pytest.mark.parametrize("name", [*CLUSTER_FILES, "deploy/control-plane.service"])
def test_no_secret_is_written_in_a_deployment_file(name: str) -> None:
    text = (ROOT / name).read_text()
    assert not re.search(r"(?i)(token|secret|password)\s*[:=]\s*['\"]?[A-Za-z0-9_\-]{16,}", text)


def test_head_start_runs_serve_with_flags_the_cli_has() -> None:
    script = (ROOT / "deploy" / "head-start.sh").read_text()
    line = next(
        line for line in script.replace("\\\n", " ").splitlines() if "control-plane serve" in line
    )
    words = [w for w in shlex.split(line) if not re.match(r"^\d?>|^<|^&$", w)]
    words = words[words.index("serve") :]
    values = {"$HOST": "0.0.0.0", "$PORT": "8000", "$STATE_DIR": "/srv/state"}  # its defaults
    args = build_parser().parse_args([values.get(w, w) for w in words])
    assert args.command == "serve" and args.address == "auto" and args.port == 8000


def test_the_systemd_unit_runs_serve_with_flags_the_cli_has() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read(ROOT / "deploy" / "control-plane.service")
    exec_start = shlex.split(unit["Service"]["ExecStart"])
    assert exec_start[0].endswith("control-plane")
    args = build_parser().parse_args(exec_start[1:])
    assert args.command == "serve" and args.state_dir == "/var/lib/control-plane"
    assert unit["Service"].get("KillMode", "control-group") == "control-group"
    assert float(unit["Service"]["TimeoutStopSec"]) > 10  # serve stops within 10 s
