"""The gateway: a FastAPI app with ``/ws``, ``/healthz``, a small REST surface and the page,
deployed on Ray Serve. Each replica runs one hub listener (in its ``WebSocketManager``) and
serves the app on the gateway's port itself (``replica_server.py`` says why); Serve places,
supervises and restarts it.
"""

import asyncio
import logging
import os
import re
import time
from dataclasses import asdict, dataclass, field
from importlib import resources
from typing import Any, Literal, get_args

import ray
from fastapi import FastAPI, HTTPException, Request, WebSocket
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from ray import serve

from control_plane.actors import gateway_directory, hub_shards, runtime
from control_plane.actors.gateway_directory import GatewayAddress
from control_plane.actors.hub import RayHub
from control_plane.core import priority
from control_plane.core.errors import (
    AuthError,
    CommandError,
    ControlPlaneError,
    ForbiddenError,
    JobNotFoundError,
)
from control_plane.core.job_types import DEFAULT_TYPES, JobTypeError, JobTypes
from control_plane.core.limits import close_reason
from control_plane.core.principals import Principal
from control_plane.core.protocol import CloseCode, JobCommand, encode, error_reply
from control_plane.gateway import auth
from control_plane.gateway.audit import AuditTrail
from control_plane.gateway.manager import SocketConfig, get_ws_manager
from control_plane.gateway.replica_server import ReplicaServer, raise_open_files_limit
from control_plane.observability import logs, metrics, tracing

logger = logging.getLogger(__name__)

DEPLOYMENT_NAME = "gateway"
STATIC = resources.files("control_plane.gateway").joinpath("static")
STATIC_TYPES = {"js": "text/javascript", "css": "text/css", "svg": "image/svg+xml"}
CLIENT_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,64}")
Command = Literal["pause", "resume", "cancel", "suspend"]
COMMANDS = get_args(Command)


def _refusals(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The refusals a REST route documents (its OpenAPI responses)."""
    text = {
        401: "no valid token (or a Host that is not ours)",
        403: "the caller's role or the job's owner does not allow it",
        404: "no such job",
        409: "the job's state does not allow the command",
    }
    return {code: {"description": text[code]} for code in codes}


@dataclass
class GatewayConfig:
    # Tokens are checked with the credentials in Ray's KV (auth.store_credentials): never
    # here, where Serve keeps and shows the init args. False only with --no-auth.
    auth: bool = True
    allowed_origins: list[str] = field(default_factory=list)
    allowed_hosts: list[str] = field(default_factory=list)  # beside loopback and the bound host
    socket: SocketConfig = field(default_factory=SocketConfig)
    host: str = "127.0.0.1"
    port: int = 8000
    num_replicas: int = 1  # one per node; a single one runs on the head node
    # Ports ``port .. port+port_span-1``: each replica listens on the first one free on its
    # node (nodes that share an address, as on one test machine, need one each).
    port_span: int = 1
    # What the page's submit form offers: ``module:function`` strings (--job-type).
    job_types: list[str] = field(default_factory=lambda: list(DEFAULT_TYPES))


app = FastAPI(
    title="Ray job control plane",
    summary="Jobs on Ray, watched and steered: the REST side of the gateway (the socket is /ws).",
    version="0.1.0",
    docs_url=None,
    redoc_url=None,
)


def _status_dict(status: Any) -> dict[str, Any]:
    dumped: dict[str, Any] = status.model_dump(mode="json")
    return dumped


async def _refuse(websocket: WebSocket, code: int, error_code: str, message: str) -> None:
    """Accept, say why in an ``error`` frame, and close: browsers cannot read a 403."""
    await websocket.accept()
    await websocket.send_text(encode(error_reply(None, error_code, message)))
    await websocket.close(code, close_reason(message))  # at most 123 bytes of UTF-8


def bind_client_id(principal: Principal, given: str | None) -> str | None:
    """The client id a socket runs under: a signed token's subject is part of it, so a
    client resumes only its own ids (another principal naming the same id gets another).
    The shared token's admin keeps the ids it gives."""
    if given is None or not principal.signed:
        return given
    return f"{principal.sub}~{given}"


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
        logs.configure_actor()
        self._controller = runtime.controller()
        self._job_types = JobTypes(config.job_types)
        self._manager = get_ws_manager()
        self._credentials = auth.load_credentials() if config.auth else None
        self._hosts = auth.allowed_hosts(
            config.host, config.allowed_hosts, ray.util.get_node_ip_address()
        )
        hubs = hub_shards.handles()  # shard 0 first; one unless --hub-shards
        hub = hubs[0]
        self._audit = AuditTrail(
            hub.publish.remote, serve.get_replica_context().replica_id.unique_id
        )
        self._manager.configure(
            config.socket,
            [RayHub(h) for h in hubs] if len(hubs) > 1 else RayHub(hub),
            hub,
            self._run_command,
            self._controller.snapshot.remote,
            owners=self._controller.owners.remote,
            authenticator=self._principal_of,
            audit=self._audit,
        )
        # The hub reader starts now, before any socket can connect: one reader per replica.
        self._manager.start()
        self._metrics = asyncio.get_running_loop().create_task(
            metrics.flush_every(self._manager.flush_metrics)
        )
        # A file descriptor per socket: the soft limit (often 1,024) up to the hard one.
        soft, hard = raise_open_files_limit()
        priority.favour_process()  # ahead of the jobs' bodies (core/priority.py)
        log = logger.info if soft > config.socket.max_connections else logger.warning
        log(
            "open files limit %d (hard %d) for at most %d sockets on this replica",
            soft,
            hard,
            config.socket.max_connections,
        )
        self._server = ReplicaServer(
            app,
            config.host,
            config.port,
            ping_interval=config.socket.heartbeat_interval,
            ping_timeout=config.socket.heartbeat_timeout,
            port_span=config.port_span,
            handshake_timeout=config.socket.handshake_timeout,
            sockets={"/ws": self._socket},
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
        # Applied once per (client, request id, job, command): the same id reused for
        # another job or command is another request.
        key = (client_id, str(msg.id), msg.job_id, msg.command) if msg.id is not None else None
        try:
            status = await self._controller.command.remote(
                msg.job_id, msg.command, key, tracing.carrier()
            )
        except ControlPlaneError:
            raise
        except Exception as e:
            raise CommandError(f"{msg.type} failed: {type(e).__name__}: {e}") from e
        return {"status": _status_dict(status)}

    async def set_metrics(self, on: bool) -> None:
        """Turn metrics on or off in this replica (benchmarks compare the two)."""
        metrics.set_enabled(on)

    def _principal_of(self, token: str) -> Principal:
        if self._credentials is None:
            raise AuthError("this gateway takes no tokens (--no-auth)")
        return self._credentials.principal(token)

    def _authenticate(self, request: Request | WebSocket) -> Principal:
        """Who sent ``request`` (its Host checked first); :class:`AuthError` if nobody."""
        auth.check_host(request.headers.get("host"), self._hosts)
        return auth.authenticate(
            credentials=self._credentials,
            headers=request.headers,
            cookies=request.cookies,
            query=request.query_params,
            cookie=auth.cookie_name(self._address.port),
        )

    async def __del__(self) -> None:
        """Serve calls this when the replica stops: tell clients to come back (1012)."""
        gateway_directory.withdraw(self._address.replica)
        self._metrics.cancel()
        await self._manager.close_all(CloseCode.RESTARTING, "gateway restarting")
        await self._server.stop()

    @app.websocket("/ws")
    async def ws(self, websocket: WebSocket) -> None:
        """The socket endpoint (the replica's server hands ``/ws`` to :meth:`_socket`
        directly; this route serves it where FastAPI routes it, as behind Serve's proxy)."""
        await self._socket(websocket)

    async def _socket(self, websocket: WebSocket) -> None:
        headers = websocket.headers
        host = headers.get("host")
        error_code = "forbidden_host"
        try:
            auth.check_host(host, self._hosts)
            error_code = "forbidden_origin"
            auth.check_origin(headers.get("origin"), host, self._config.allowed_origins)
        except AuthError as e:
            self._audit.record("-", "connect", error_code, detail=e.message)
            await _refuse(websocket, CloseCode.FORBIDDEN_ORIGIN, error_code, e.message)
            return
        try:
            principal = self._authenticate(websocket)
        except AuthError as e:
            self._audit.record("-", "connect", e.code, detail=e.message)
            await _refuse(websocket, CloseCode.UNAUTHORIZED, e.code, e.message)
            return
        given = websocket.query_params.get("client_id") or None
        if given is not None and not CLIENT_ID_RE.fullmatch(given):
            why = "client_id must be 1-64 of letters, digits, '.', '_', ':', '-'"
            await _refuse(websocket, CloseCode.BAD_REQUEST, "invalid_client_id", why)
            return
        await self._manager.serve(websocket, bind_client_id(principal, given), principal)

    @app.get("/healthz")
    async def healthz(self) -> dict[str, Any]:
        where = asdict(self._address)
        return {"status": "ok", "pid": os.getpid(), **where, **self._manager.stats()}

    @app.get("/", response_model=None, include_in_schema=False)
    async def index(self, request: Request) -> Response:
        token = request.query_params.get("token")
        if token is not None and self._credentials is not None:
            try:
                auth.check_host(request.headers.get("host"), self._hosts)
                principal = self._credentials.principal(token)
                session = self._credentials.session_token(principal, auth.SESSION_TTL)
            except AuthError as e:
                self._audit.record("-", "open_page", e.code, detail=e.message, via="http")
                return HTMLResponse(f"<h1>401</h1><p>{e.message}</p>", status_code=401)
            response = RedirectResponse("/", status_code=303)
            max_age = int(
                min(auth.SESSION_TTL, (principal.expires_at or float("inf")) - time.time())
            )
            response.set_cookie(
                auth.cookie_name(self._address.port),
                session,
                httponly=True,
                samesite="strict",
                max_age=max(1, max_age),
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

    @app.get("/static/{name}", include_in_schema=False)
    async def static(self, name: str) -> Response:
        media = STATIC_TYPES.get(name.rpartition(".")[2])
        path = STATIC.joinpath(name)
        if media is None or "/" in name or not path.is_file():
            raise HTTPException(404)
        return Response(path.read_text(), media_type=media)

    @app.get("/api/token", summary="Who the presented token stands for", responses=_refusals(401))
    async def api_token(self, request: Request) -> dict[str, Any]:
        return self._guard(request).public()

    @app.get("/api/jobs", summary="The jobs the caller may see", responses=_refusals(401))
    async def api_jobs(self, request: Request) -> list[dict[str, Any]]:
        principal = self._guard(request)
        statuses = await self._controller.list_jobs.remote()
        return [_status_dict(s) for s in statuses if principal.may_see_owner(s.owner)]

    @app.get("/api/jobs/{job_id}", summary="One job's status", responses=_refusals(401, 403, 404))
    async def api_job(self, job_id: str, request: Request) -> dict[str, Any]:
        principal = self._guard(request)
        status = await self._visible_status(principal, job_id)
        return _status_dict(status)

    @app.post(
        "/api/jobs/{job_id}/{command}",
        summary="Pause, resume, cancel or suspend a job",
        responses=_refusals(401, 403, 404, 409),
    )
    async def api_command(self, job_id: str, command: Command, request: Request) -> dict[str, Any]:
        principal = self._guard(request)
        if len(job_id) > 128:
            raise HTTPException(404, "no such job")
        msg = JobCommand.model_validate({"type": f"job.{command}", "job_id": job_id})
        try:
            await self._visible_status(principal, job_id)
            await self._manager.authorize_command(principal, job_id)
            result = await self._run_command(msg, f"rest:{principal.sub}")
        except ForbiddenError as e:
            self._audit.record(principal.sub, msg.type, e.code, job_id=job_id, via="http")
            raise HTTPException(403, e.message) from e
        except ControlPlaneError as e:
            self._audit.record(principal.sub, msg.type, e.code, job_id=job_id, via="http")
            raise HTTPException(409, e.message) from e
        self._audit.record(principal.sub, msg.type, "ok", job_id=job_id, via="http")
        return result

    async def _visible_status(self, principal: Principal, job_id: str) -> Any:
        """The job's status; 404 when there is no such job, 403 when it is not the caller's
        to see."""
        try:
            status = await self._controller.get_status.remote(job_id)
        except JobNotFoundError as e:
            raise HTTPException(404, e.message) from e
        except ControlPlaneError as e:
            raise HTTPException(404, e.message) from e
        if not principal.may_see_owner(status.owner):
            self._audit.record(principal.sub, "read_job", "forbidden", job_id=job_id, via="http")
            raise HTTPException(403, f"you may not see job {job_id!r}")
        return status

    @app.get(
        "/api/job-types", summary="The job types the caller may submit", responses=_refusals(401)
    )
    async def api_job_types(self, request: Request) -> JSONResponse:
        self._guard(request)
        return JSONResponse(self._job_types.public())

    # Not in the OpenAPI document: its body is checked against the registered types, which
    # a static schema cannot name, and a fuzzer given one would start real jobs. Not
    # ``POST /api/jobs`` either: an undocumented method on a documented path must be a 405.
    @app.post("/api/submit", status_code=201, include_in_schema=False)
    async def api_submit(self, request: Request) -> JSONResponse:
        """Submit a registered job type: ``{"type": name, "params": {...}}``; the browser never
        names a ``module:function`` of its own."""
        principal = self._guard(request)
        if not principal.may_submit():
            self._audit.record(principal.sub, "submit", "forbidden", via="http")
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
        self._audit.record(principal.sub, "submit", "ok", job_id=job_id, via="http")
        status = await self._controller.get_status.remote(job_id)
        return JSONResponse(_status_dict(status), status_code=201)

    def _guard(self, request: Request) -> Principal:
        try:
            return self._authenticate(request)
        except AuthError as e:
            self._audit.record("-", request.url.path, e.code, detail=e.message, via="http")
            raise HTTPException(401, e.message) from e


def build_app(config: GatewayConfig) -> Any:
    """The gateway application: replicas bind the port on their node, so at most one runs on
    a node, and a single one runs on the head node (where ``ray up`` users connect)."""
    deployment: Any = Gateway
    actor_options: dict[str, Any] = {"num_cpus": 0, **logs.actor_env()}
    if config.num_replicas == 1:
        actor_options["resources"] = {runtime.HEAD_NODE_RESOURCE: 0.001}
    return deployment.options(
        num_replicas=config.num_replicas,
        max_replicas_per_node=1,
        ray_actor_options=actor_options,
        graceful_shutdown_timeout_s=5,
    ).bind(config)
