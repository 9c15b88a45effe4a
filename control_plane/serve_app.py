"""The gateway as a Ray Serve application builder, for ``serve deploy deploy/serve.yaml``.

Serve's own tooling (``serve deploy``, ``serve status``, in-place updates of the config)
then rolls the gateway out and scales it. The builder makes sure the hub and the controller
run, as ``control_plane.start()`` does, and returns the same application.

The token is never in the config file: it is ``CONTROL_PLANE_TOKEN`` in the environment Ray
was started with, else the token kept under the user's home on the node that builds the
application (the cluster files copy yours to the head node).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from control_plane.actors.controller import ensure_controller
from control_plane.actors.hub import DEFAULT_HISTORY, DEFAULT_HISTORY_BYTES
from control_plane.actors.hub_shards import ensure_hubs
from control_plane.core.job_types import DEFAULT_TYPES, JobTypes
from control_plane.core.limits import DEFAULT_MAX_EVENT_BYTES
from control_plane.core.shards import MAX_SHARDS
from control_plane.core.tokens import Credentials
from control_plane.core.worker_pool import DEFAULT_POOL_SIZE, PoolConfig
from control_plane.gateway import auth
from control_plane.gateway.app import GatewayConfig, build_app
from control_plane.gateway.manager import SocketConfig
from control_plane.launcher import replica_count


class GatewayArgs(BaseModel):
    """What ``args:`` in the Serve config may say; anything else is an error."""

    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    port_span: int = Field(1, ge=1)
    replicas: int | str = 1
    history: int = Field(DEFAULT_HISTORY, ge=1)
    history_age: float | None = Field(None, gt=0)
    history_bytes: int | None = Field(DEFAULT_HISTORY_BYTES, ge=1)
    max_event_bytes: int = Field(DEFAULT_MAX_EVENT_BYTES, ge=1)
    hub_shards: int = Field(1, ge=1, le=MAX_SHARDS)
    state_dir: str | None = None
    allowed_origins: list[str] = Field(default_factory=list)
    allowed_hosts: list[str] = Field(default_factory=list)
    job_types: list[str] = Field(default_factory=list)  # module:function, beside the examples
    pool_size: int = Field(DEFAULT_POOL_SIZE, ge=0)  # job actors started ahead (0: none)
    no_auth: bool = False
    socket: dict[str, Any] = Field(default_factory=dict)  # SocketConfig's fields


def app_builder(args: dict[str, Any]) -> Any:
    """Serve calls this with the config's ``args`` and deploys what it returns."""
    given = GatewayArgs.model_validate(args)
    if given.no_auth:
        auth.check_no_auth_allowed(given.host)
    token = None if given.no_auth else auth.resolve_token()
    ensure_hubs(
        given.hub_shards,
        given.history,
        given.state_dir,
        given.history_age,
        history_bytes=given.history_bytes,
        max_event_bytes=given.max_event_bytes,
    )
    ensure_controller(None, given.state_dir, PoolConfig(size=given.pool_size))
    auth.store_credentials(None if token is None else Credentials.from_token(token))
    config = GatewayConfig(
        auth=token is not None,
        allowed_hosts=given.allowed_hosts,
        allowed_origins=given.allowed_origins,
        socket=SocketConfig(**given.socket),
        host=given.host,
        port=given.port,
        num_replicas=replica_count(given.replicas),
        port_span=given.port_span,
        job_types=[*DEFAULT_TYPES, *given.job_types],
    )
    JobTypes(config.job_types)  # a type that does not load fails here, not in the replica
    return build_app(config)
