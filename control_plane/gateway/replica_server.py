"""The gateway replica's own HTTP server: uvicorn on the gateway's port, in the replica.

Ray Serve runs and supervises the gateway replica (placement, restarts, health checks), but
its HTTP proxy relays every WebSocket frame from the replica to the proxy as a separate Ray
streaming-generator item. With a thousand sockets that relay, not our code, set the latency
(p99 of seconds in ``benchmarks/run.py``'s fan-out, the same for a bare Serve endpoint)
and doubled the memory per socket. So the replica serves the FastAPI app itself, as Serve's
own experimental direct ingress does, but on the port the user asked for: frames go from
the replica's event loop straight to the socket.

The server runs as a task on the loop that runs the app's handlers (Serve's user-code loop),
so sockets, the hub listener and the handlers share one loop and no frame changes thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import resource
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import uvicorn
from starlette.websockets import WebSocket

from control_plane.gateway.handshake import deadline_protocol

logger = logging.getLogger(__name__)

BIND_PATIENCE = 5.0  # seconds to wait for a port a stopping replica still holds


def check_free(host: str, port: int) -> None:
    """Raise ``OSError`` naming the address when ``host:port`` cannot be listened on here."""
    bind(host, port, patience=0).close()


def bind(host: str, port: int, patience: float = BIND_PATIENCE, span: int = 1) -> socket.socket:
    """A listening socket on ``host`` and the first free port of ``port .. port+span-1``
    (replicas on nodes that share an address take one each); retries while all are in use
    (a replica that Serve is replacing may still hold one), then raises ``OSError``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    ports = range(port, port + max(1, span))
    deadline = time.monotonic() + patience
    while True:
        for candidate in ports:
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((host, candidate))
                sock.listen(2048)
                sock.setblocking(False)
                return sock
            except OSError as e:
                sock.close()
                if e.errno != errno.EADDRINUSE:
                    raise OSError(
                        e.errno, f"the gateway cannot listen on {host}:{candidate}: {e}"
                    ) from e
                error = e
        if time.monotonic() >= deadline:
            where = f"{host}:{port}" if span <= 1 else f"{host}:{port}-{ports[-1]}"
            raise OSError(error.errno, f"the gateway cannot listen on {where}: {error}") from error
        time.sleep(0.25)


def abort_connection(websocket: Any) -> bool:
    """Drop a socket's TCP connection at once (no close handshake); True if it could.

    For a peer that reads nothing: even a close frame waits behind its unread frames, and
    uvicorn's transport would hold the connection until they drain. ASGI has no message
    for this, so the transport is reached through uvicorn's protocol object (the bound
    ``send`` the app was given); with another server this does nothing.
    """
    protocol = getattr(getattr(websocket, "_send", None), "__self__", None)
    transport = getattr(protocol, "transport", None)
    if transport is None or not hasattr(transport, "abort"):
        return False
    transport.abort()
    return True


SocketHandler = Callable[[WebSocket], Awaitable[None]]


class SocketRoutes:
    """An ASGI app that hands a WebSocket on one of ``routes``' paths straight to its
    handler, and everything else to ``app``.

    Through FastAPI a socket's handler runs under its router, middleware and dependency
    stack for as long as the socket is open: 11 KB of the 47 KB an idle socket cost the
    replica (``python -m benchmarks.socket_cost --trace``), and its ``send`` wrapped, so
    that neither ``wire.py``'s direct writes nor :func:`abort_connection` could reach
    uvicorn's protocol. The socket's handler checks its own Host, Origin and token, as
    it did under FastAPI (which ran no middleware of ours for it).
    """

    def __init__(self, app: Any, routes: dict[str, SocketHandler]) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            handler = self.routes.get(scope["path"])
            if handler is not None:
                await handler(WebSocket(scope, receive, send))
                return
        await self.app(scope, receive, send)


def raise_open_files_limit() -> tuple[int, int]:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit (a replica holds a file
    descriptor per socket: 10,000 sockets need more than the usual soft 1,024); returns
    (soft, hard) as they are now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as e:
            logger.warning("could not raise the open files limit from %d to %d: %s", soft, hard, e)
    return resource.getrlimit(resource.RLIMIT_NOFILE)


class ReplicaServer:
    """uvicorn serving ``app`` on ``host:port`` as a task of the running loop; WebSockets
    on the paths of ``sockets`` go straight to their handlers (:class:`SocketRoutes`)."""

    def __init__(
        self,
        app: Any,
        host: str,
        port: int,
        ping_interval: float | None = 15.0,
        ping_timeout: float | None = 20.0,
        port_span: int = 1,
        handshake_timeout: float | None = None,
        sockets: dict[str, SocketHandler] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.port_span = port_span
        self._config = uvicorn.Config(
            SocketRoutes(app, sockets) if sockets else app,
            lifespan="off",
            access_log=False,
            log_level="warning",
            ws="websockets-sansio",
            # Liveness: RFC 6455 pings, which browsers and libraries answer by themselves.
            ws_ping_interval=ping_interval,
            ws_ping_timeout=ping_timeout,
            ws_per_message_deflate=False,  # frames are small; deflate costs CPU per socket
            ws_max_size=16 * 1024 * 1024,  # the app closes over-limit frames itself (1009)
            timeout_graceful_shutdown=2,
            # TCP open to upgrade done, bounded (uvicorn bounds only idle keep-alives)
            http=deadline_protocol(handshake_timeout) if handshake_timeout else "auto",
        )
        self._server = uvicorn.Server(self._config)
        self._task: asyncio.Task[None] | None = None
        self._socket: socket.socket | None = None

    def start(self, ready: Callable[[], Awaitable[None]] | None = None) -> None:
        """Bind now (so a port that cannot be had fails the replica), serve in the background
        once ``ready`` returns (connections wait in the listen backlog meanwhile)."""
        self._socket = bind(self.host, self.port, span=self.port_span)
        self.port = self._socket.getsockname()[1]
        self._task = asyncio.get_running_loop().create_task(self._serve(self._socket, ready))

    async def _serve(
        self, sock: socket.socket, ready: Callable[[], Awaitable[None]] | None
    ) -> None:
        if ready is not None:
            await ready()
        await self._server.serve(sockets=[sock])

    def failure(self) -> str | None:
        """Why the server stopped, or None while it runs."""
        if self._task is None:
            return "not started"
        if not self._task.done():
            return None
        if self._task.cancelled():
            return "cancelled"
        error = self._task.exception()
        return f"{type(error).__name__}: {error}" if error else "stopped"

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, let open requests end (sockets are closed by the app first)."""
        if self._task is None:
            return
        self._server.should_exit = True
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(self._task)
        except (TimeoutError, asyncio.CancelledError):
            self._server.force_exit = True
            self._task.cancel()
        except Exception:
            logger.warning("the gateway's server stopped with an error", exc_info=True)
        finally:
            if self._socket is not None:
                with contextlib.suppress(OSError):
                    self._socket.close()
