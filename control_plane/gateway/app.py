"""The gateway: a FastAPI app with ``/ws``, ``/healthz``, a small REST surface and the page,
deployed on Ray Serve. Each replica runs one hub listener (in its ``WebSocketManager``) and
serves the app on the gateway's port itself (``replica_server.py`` says why); Serve places,
supervises and restarts it.
"""

import asyncio
import logging
import os
from dataclasses import asdict, dataclass, field
from importlib import resources
from typing import Any

import ray
from fastapi import FastAPI, HTTPException, Request, WebSocket
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from ray import serve

from control_plane.actors import gateway_directory, runtime
from control_plane.actors.gateway_directory import GatewayAddress
from control_plane.actors.hub import RayHub
from control_plane.core import principals
from control_plane.core.errors import AuthError, CommandError, ControlPlaneError
from control_plane.core.job_types import DEFAULT_TYPES, JobTypeError, JobTypes
from control_plane.core.protocol import CloseCode, JobCommand, encode, error_reply
from control_plane.gateway import auth
from control_plane.gateway.manager import SocketConfig, get_ws_manager
from control_plane.gateway.replica_server import ReplicaServer

logger = logging.getLogger(__name__)

DEPLOYMENT_NAME = "gateway"
STATIC = resources.files("control_plane.gateway").joinpath("static")
STATIC_TYPES = {"js": "text/javascript", "css": "text/css", "svg": "image/svg+xml"}


@dataclass
class GatewayConfig:
    token: str | None  # None only with --no-auth
    allowed_origins: list[str] = field(default_factory=list)
    socket: SocketConfig = field(default_factory=SocketConfig)
    host: str = "127.0.0.1"
    port: int = 8000
    num_replicas: int = 1  # one per node; a single one runs on the head node
    # Ports ``port .. port+port_span-1``: each replica listens on the first one free on its
    # node (nodes that share an address, as on one test machine, need one each).
    port_span: int = 1
    # What the page's submit form offers: ``module:function`` strings (--job-type).
    job_types: list[str] = field(default_factory=lambda: list(DEFAULT_TYPES))


app = FastAPI(title="Ray job control plane", docs_url=None, redoc_url=None)


def _status_dict(status: Any) -> dict[str, Any]:
    dumped: dict[str, Any] = status.model_dump(mode="json")
    return dumped


async def _refuse(websocket: WebSocket, code: int, error_code: str, message: str) -> None:
    """Accept, say why in an ``error`` frame, and close: browsers cannot read a 403."""
    await websocket.accept()
    await websocket.send_text(encode(error_reply(None, error_code, message)))
    await websocket.close(code, message[:120])


async def _replica_initialized(timeout: float = 60.0) -> None:
    """Until Serve has made this replica's instance the one its routes call, a request
    would reach a method bound to nothing (a 500): serve only once it has."""
    deadline = asyncio.get_running_loop().time() + timeout
    while serve.get_replica_context().servable_object is None:
        if asyncio.get_running_loop().time() > deadline:
            logger.warning("serving before Serve reported the replica initialized")
            return
        await asyncio.sleep(0.01)


@serve.deployment(name=DEPLOYMENT_NAME, ray_actor_options={"num_cpus": 0})
@serve.ingress(app)
class Gateway:
    def __init__(self, config: GatewayConfig) -> None:
        self._config = config
        self._controller = runtime.controller()
        self._job_types = JobTypes(config.job_types)
        self._manager = get_ws_manager()
        hub = runtime.hub()
        self._manager.configure(
            config.socket, RayHub(hub), hub, self._run_command, self._controller.snapshot.remote
        )
        # The hub reader starts now, before any socket can connect: one reader per replica.
        self._manager.start()
        self._server = ReplicaServer(
            app,
            config.host,
            config.port,
            ping_interval=config.socket.heartbeat_interval,
            ping_timeout=config.socket.heartbeat_timeout,
            port_span=config.port_span,
        )
        self._server.start(ready=_replica_initialized)
        self._address = GatewayAddress(
            serve.get_replica_context().replica_id.unique_id,
            config.host,
            self._server.port,
            ray.util.get_node_ip_address(),
        )
        gateway_directory.announce(self._address)  # where `control-plane watch` finds it

    def check_health(self) -> None:
        """Serve's health check: a replica whose server stopped is replaced. It also pokes
        the controller, whose loops a restart by Ray would otherwise leave stopped."""
        self._controller.start.remote()
        failure = self._server.failure()
        if failure is not None:
            raise RuntimeError(f"the gateway's server on port {self._server.port} ended: {failure}")

    async def _run_command(self, msg: JobCommand, client_id: str) -> dict[str, Any]:
        key = (client_id, str(msg.id)) if msg.id is not None else None
        try:
            status = await self._controller.command.remote(msg.job_id, msg.command, key)
        except ControlPlaneError:
            raise
        except Exception as e:
            raise CommandError(f"{msg.type} failed: {type(e).__name__}: {e}") from e
        return {"status": _status_dict(status)}

    def _authenticate(self, request: Request | WebSocket) -> None:
        auth.authenticate(
            expected=self._config.token,
            headers=request.headers,
            cookies=request.cookies,
            query=request.query_params,
        )

    async def __del__(self) -> None:
        """Serve calls this when the replica stops: tell clients to come back (1012)."""
        gateway_directory.withdraw(self._address.replica)
        await self._manager.close_all(CloseCode.RESTARTING, "gateway restarting")
        await self._server.stop()

    @app.websocket("/ws")
    async def ws(self, websocket: WebSocket) -> None:
        try:
            auth.check_origin(
                websocket.headers.get("origin"),
                websocket.headers.get("host"),
                self._config.allowed_origins,
            )
        except AuthError as e:
            await _refuse(websocket, CloseCode.FORBIDDEN_ORIGIN, "forbidden_origin", e.message)
            return
        try:
            self._authenticate(websocket)
        except AuthError as e:
            await _refuse(websocket, CloseCode.UNAUTHORIZED, e.code, e.message)
            return
        client_id = websocket.query_params.get("client_id") or None
        await self._manager.serve(websocket, client_id)

    @app.get("/healthz")
    async def healthz(self) -> dict[str, Any]:
        where = asdict(self._address)
        return {"status": "ok", "pid": os.getpid(), **where, **self._manager.stats()}

    @app.get("/", response_model=None)
    async def index(self, request: Request) -> Response:
        token = request.query_params.get("token")
        if token is not None and self._config.token is not None:
            if not auth.token_matches(token, self._config.token):
                return HTMLResponse("<h1>401</h1><p>Wrong token.</p>", status_code=401)
            response = RedirectResponse("/", status_code=303)
            response.set_cookie(
                auth.COOKIE_NAME, token, httponly=True, samesite="strict", max_age=30 * 86400
            )
            return response
        try:
            self._authenticate(request)
        except AuthError:
            return HTMLResponse(
                "<h1>401</h1><p>Open the URL that <code>control-plane serve</code> printed "
                "(it carries the token).</p>",
                status_code=401,
            )
        page = STATIC.joinpath("index.html").read_text()
        return HTMLResponse(page)

    @app.get("/static/{name}")
    async def static(self, name: str) -> Response:
        media = STATIC_TYPES.get(name.rpartition(".")[2])
        path = STATIC.joinpath(name)
        if media is None or "/" in name or not path.is_file():
            raise HTTPException(404)
        return Response(path.read_text(), media_type=media)

    @app.get("/api/jobs")
    async def api_jobs(self, request: Request) -> JSONResponse:
        self._guard(request)
        statuses = await self._controller.list_jobs.remote()
        return JSONResponse([_status_dict(s) for s in statuses])

    @app.get("/api/jobs/{job_id}")
    async def api_job(self, job_id: str, request: Request) -> JSONResponse:
        self._guard(request)
        try:
            status = await self._controller.get_status.remote(job_id)
        except ControlPlaneError as e:
            raise HTTPException(404, e.message) from e
        return JSONResponse(_status_dict(status))

    @app.get("/api/job-types")
    async def api_job_types(self, request: Request) -> JSONResponse:
        self._guard(request)
        return JSONResponse(self._job_types.public())

    @app.post("/api/jobs")
    async def api_submit(self, request: Request) -> JSONResponse:
        """Submit a registered job type: ``{"type": name, "params": {...}}``; the browser never
        names a ``module:function`` of its own."""
        principal = self._guard(request)
        if not principal.may_submit():
            raise HTTPException(403, f"{principal.role.value} may not submit jobs")
        try:
            job_type, kwargs = self._job_types.resolve(await request.json())
        except ValueError as e:  # the body is not JSON
            raise HTTPException(422, f"the body is not JSON: {e}") from e
        except JobTypeError as e:
            raise HTTPException(422, e.message) from e
        job_id, _ = await self._controller.submit.remote(
            job_type.target, (), kwargs, job_type.name, principal.sub
        )
        status = await self._controller.get_status.remote(job_id)
        return JSONResponse(_status_dict(status), status_code=201)

    def _guard(self, request: Request) -> principals.Principal:
        try:
            self._authenticate(request)
        except AuthError as e:
            raise HTTPException(401, e.message) from e
        return principals.SHARED_ADMIN


def build_app(config: GatewayConfig) -> Any:
    """The gateway application: replicas bind the port on their node, so at most one runs on
    a node, and a single one runs on the head node (where ``ray up`` users connect)."""
    deployment: Any = Gateway
    actor_options: dict[str, Any] = {"num_cpus": 0}
    if config.num_replicas == 1:
        actor_options["resources"] = {runtime.HEAD_NODE_RESOURCE: 0.001}
    return deployment.options(
        num_replicas=config.num_replicas,
        max_replicas_per_node=1,
        ray_actor_options=actor_options,
        graceful_shutdown_timeout_s=5,
    ).bind(config)
