"""Shared fixtures: one Ray session and one control plane (hub, controller, Serve gateway)
for every integration test; unit tests under ``tests/unit`` need neither."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

TOKEN = "test-token-" + os.urandom(6).hex()
HISTORY = 120_000  # above the 100,000-event job a plain client reads at its own pace; a test
# can still outrun it
SEND_QUEUE = 1024
HEARTBEAT_INTERVAL = 1.0  # seconds between the gateway's RFC 6455 pings
HEARTBEAT_TIMEOUT = 8.0  # a socket whose pong does not come this long after a ping is closed
MAX_LAG = 5.0  # a send blocked this long (the client reads nothing) closes it with 4008,
# before the ping timeout would drop it


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


METRICS_PORT = free_port()  # Ray's Prometheus endpoint for the test session


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    import ray

    # Ray's metrics agent serves Prometheus text on this port (tests/integration/
    # test_observability.py reads it as Prometheus would).
    ray.init(
        address="local", num_cpus=2, include_dashboard=False, _metrics_export_port=METRICS_PORT
    )
    yield
    import control_plane

    control_plane.stop()
    from ray import serve

    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="session")
def plane(ray_session: None) -> object:
    """The running control plane: ``plane.ws_url``, ``plane.token``, ``plane.base_url``."""
    import control_plane
    from control_plane.core.system import SystemConfig
    from control_plane.gateway.manager import SocketConfig

    return control_plane.start(
        port=free_port(),
        # CONTROL_PLANE_TEST_HUB_SHARDS=2 runs the suite against a hub of two shards.
        hub_shards=int(os.environ.get("CONTROL_PLANE_TEST_HUB_SHARDS") or 1),
        token=TOKEN,
        history=HISTORY,
        system=SystemConfig(metrics_interval=0.5, stall_after=3.0),
        socket=SocketConfig(
            heartbeat_interval=HEARTBEAT_INTERVAL,
            heartbeat_timeout=HEARTBEAT_TIMEOUT,
            max_lag=MAX_LAG,
            subscribe_deadline=15.0,
            send_queue_size=SEND_QUEUE,
            close_timeout=30.0,  # a slow test client reads its backlog before the close frame
        ),
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """``ray_up`` tests run ``ray stop``, which stops every Ray on the machine: run them
    before any test that starts one (tests without Ray keep going first)."""
    uses_ray = [i for i in items if i.get_closest_marker("ray") or i.get_closest_marker("ray_up")]
    first = [i for i in items if i not in uses_ray]
    ray_up = [i for i in uses_ray if i.get_closest_marker("ray_up")]
    items[:] = first + ray_up + [i for i in uses_ray if not i.get_closest_marker("ray_up")]
