"""``control_plane.start()`` and ``stop()``: Ray, the hub, the controller and the gateway.

``start`` is idempotent: it attaches to what is already running (by the actors' names and
the Serve application's name) and creates only what is missing.
"""

from __future__ import annotations

import contextlib
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import ray
from ray import serve

from control_plane.actors import runtime
from control_plane.actors.controller import ensure_controller
from control_plane.actors.hub import DEFAULT_HISTORY, DEFAULT_HISTORY_BYTES
from control_plane.actors.hub_shards import ensure_hubs, names
from control_plane.core.job_types import DEFAULT_TYPES, JobTypes
from control_plane.core.limits import DEFAULT_MAX_EVENT_BYTES
from control_plane.core.shards import MAX_SHARDS
from control_plane.core.system import SystemConfig
from control_plane.core.tokens import Credentials
from control_plane.core.worker_pool import DEFAULT_POOL_SIZE, PoolConfig
from control_plane.gateway import auth
from control_plane.gateway.app import GatewayConfig, build_app
from control_plane.gateway.manager import SocketConfig
from control_plane.gateway.replica_server import check_free

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ControlPlaneInfo:
    """Where the running control plane is, and how to get in."""

    host: str
    port: int
    token: str | None = field(repr=False)  # never in a log line or a repr
    started_ray: bool

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def url(self) -> str:
        """The dashboard URL; it carries the token, as Jupyter's does."""
        return f"{self.base_url}/?token={self.token}" if self.token else f"{self.base_url}/"

    @property
    def ws_url(self) -> str:
        return self.base_url.replace("http", "ws", 1) + "/ws"


_info: ControlPlaneInfo | None = None


def start(
    host: str = "127.0.0.1",
    port: int = 8000,
    address: str | None = None,
    token: str | None = None,
    *,
    no_auth: bool = False,
    allowed_origins: Iterable[str] = (),
    allowed_hosts: Iterable[str] = (),
    socket: SocketConfig | None = None,
    system: SystemConfig | None = None,
    history: int = DEFAULT_HISTORY,
    num_replicas: int | str = 1,
    ready_timeout: float = 120.0,
    state_dir: str | None = None,
    port_span: int = 1,
    history_age: float | None = None,
    history_bytes: int | None = DEFAULT_HISTORY_BYTES,
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    job_types: Iterable[str] = (),
    pool_size: int = DEFAULT_POOL_SIZE,
    hub_shards: int = 1,
) -> ControlPlaneInfo:
    """Make sure Ray, the EventHub, the controller and the gateway run; return where.

    Attaches to ``address`` (or ``RAY_ADDRESS``), else starts a new local Ray. The token
    defaults to ``CONTROL_PLANE_TOKEN``, else one kept under the user's home.
    ``num_replicas`` gateway replicas (or ``"per-node"``) run one per node, each on the first
    free port of ``port .. port+port_span-1`` there. ``state_dir``
    is where the hub's log and the controller's registry live, on the head node
    (``control_plane/actors/state_dir.py`` says the default). The hub keeps the newest
    ``history`` events of at most ``history_bytes`` bytes, and with ``history_age`` none
    older than that many seconds; it refuses events over ``max_event_bytes``.
    ``job_types`` (``module:function``) are offered by the page's submit form beside the
    examples. The controller keeps ``pool_size`` job actors started ahead of their jobs,
    so that a submit starts at once (0: each job's actor starts with its job).
    ``hub_shards`` EventHub actors share the events, placed by channel
    (``core/shards.py``; one, the default, keeps the wire as it was).
    """
    global _info
    if _info is not None and ray.is_initialized():
        return _info
    started_ray = runtime.ensure_ray(address)
    try:
        info = _start_on_ray(
            host,
            port,
            token,
            started_ray,
            no_auth=no_auth,
            allowed_origins=allowed_origins,
            allowed_hosts=allowed_hosts,
            socket=socket,
            system=system,
            history=history,
            num_replicas=num_replicas,
            ready_timeout=ready_timeout,
            state_dir=state_dir,
            port_span=port_span,
            history_age=history_age,
            history_bytes=history_bytes,
            max_event_bytes=max_event_bytes,
            job_types=job_types,
            pool_size=pool_size,
            hub_shards=hub_shards,
        )
    except BaseException:
        if started_ray:  # leave nothing behind that the caller cannot see
            with contextlib.suppress(Exception):
                serve.shutdown()
            ray.shutdown()
        raise
    _info = info
    return info


def _start_on_ray(
    host: str,
    port: int,
    token: str | None,
    started_ray: bool,
    *,
    no_auth: bool,
    allowed_origins: Iterable[str],
    allowed_hosts: Iterable[str],
    socket: SocketConfig | None,
    system: SystemConfig | None,
    history: int,
    num_replicas: int | str,
    ready_timeout: float,
    state_dir: str | None,
    port_span: int = 1,
    history_age: float | None = None,
    history_bytes: int | None = DEFAULT_HISTORY_BYTES,
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    job_types: Iterable[str] = (),
    pool_size: int = DEFAULT_POOL_SIZE,
    hub_shards: int = 1,
) -> ControlPlaneInfo:
    registered = [*DEFAULT_TYPES, *job_types]
    JobTypes(registered)  # a --job-type that does not load fails here, not in the replica
    if no_auth:
        auth.check_no_auth_allowed(host)
        token_value = None
    else:
        token_value = auth.resolve_token(token)
    ensure_hubs(
        hub_shards,
        history,
        state_dir,
        history_age,
        history_bytes=history_bytes,
        max_event_bytes=max_event_bytes,
    )
    ensure_controller(system, state_dir, PoolConfig(size=pool_size))
    if not _app_running():
        if started_ray:
            # The gateway's replica runs on this machine (the head node): a port in use
            # fails here at once, rather than after Serve gave up on the replica.
            check_free(host, port)
        # The gateway replica serves its own port; Serve's HTTP proxy is not needed (where
        # Serve already runs, with or without one, this attaches to it as it is).
        serve.start(proxy_location="Disabled")
        auth.store_credentials(None if token_value is None else Credentials.from_token(token_value))
        config = GatewayConfig(
            auth=token_value is not None,
            allowed_origins=list(allowed_origins),
            allowed_hosts=list(allowed_hosts),
            socket=socket or SocketConfig(),
            host=host,
            port=port,
            num_replicas=replica_count(num_replicas),
            port_span=port_span,
            job_types=registered,
        )
        serve.run(build_app(config), name=runtime.SERVE_APP_NAME, route_prefix=None)
    info = ControlPlaneInfo(host, port, token_value, started_ray)
    _wait_healthy(info, ready_timeout)
    return info


def replica_count(replicas: int | str) -> int:
    """``replicas`` as a number: ``"per-node"`` is one on each node alive now."""
    if replicas == "per-node":
        return max(1, sum(1 for node in ray.nodes() if node["Alive"]))
    count = int(replicas)
    if count < 1:
        raise ValueError(f"replicas must be at least 1 or 'per-node', got {replicas!r}")
    return count


def _app_running() -> bool:
    try:
        status = serve.status()
    except Exception:
        return False
    app = status.applications.get(runtime.SERVE_APP_NAME)
    return app is not None and str(app.status).endswith("RUNNING")


def _wait_healthy(info: ControlPlaneInfo, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{info.base_url}/healthz", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError) as e:
            last = e
        time.sleep(0.2)
    raise TimeoutError(f"the gateway at {info.base_url} did not become healthy: {last}")


def stop(kill_jobs: bool = True) -> None:
    """Stop what :func:`start` runs: the gateway, the hub, the controller (and jobs)."""
    global _info
    if not ray.is_initialized():
        _info = None
        return
    try:
        serve.delete(runtime.SERVE_APP_NAME)
    except Exception:
        logger.debug("no serve app to delete", exc_info=True)
    controller = runtime.get_actor(runtime.CONTROLLER_NAME)
    if controller is not None:  # its pooled workers hold no job: they go with it
        with contextlib.suppress(Exception):
            ray.get(controller.drain_pool.remote(), timeout=30)
    if kill_jobs and controller is not None:
        statuses: list[Any] = ray.get(controller.list_jobs.remote())
        # The controller ends them for good: recorded cancelled, never restarted (a
        # killed actor is otherwise a lost one, restarted from its last save).
        ray.get(controller.stop_jobs.remote())
        for status in statuses:
            actor = runtime.get_actor(runtime.job_actor_name(status.job_id))
            if actor is not None:
                ray.kill(actor, no_restart=True)
    for name in (runtime.CONTROLLER_NAME, *names(MAX_SHARDS)):
        actor = runtime.get_actor(name)
        if actor is not None:
            ray.kill(actor, no_restart=True)
    started_ray = _info.started_ray if _info else False
    _info = None
    if started_ray:
        serve.shutdown()
        ray.shutdown()


def current() -> ControlPlaneInfo | None:
    return _info
