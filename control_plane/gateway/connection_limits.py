"""Sockets over the connection limits: refused after the upgrade, so that a browser can read
why (a refused handshake shows it only a 403 with no reason), with an ``error`` frame and
the close code 4029 (:attr:`~control_plane.core.protocol.CloseCode.TOO_MANY_CONNECTIONS`).

Two limits, both per replica: ``max_connections`` sockets in all, and
``max_connections_per_principal`` sockets of one principal (keyed by a string, the
principal's ``sub``; the empty key, a socket whose principal is not known, counts only
against the first). A socket that replaces one of its own client id counts once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from starlette.websockets import WebSocket

from control_plane.core.errors import ControlPlaneError
from control_plane.core.limits import close_reason
from control_plane.core.protocol import CloseCode, encode, error_reply

if TYPE_CHECKING:
    from control_plane.gateway.session import SocketConfig


class TooManyConnectionsError(ControlPlaneError):
    """A socket refused by a connection limit (it was closed with 4029)."""

    code = "too_many_connections"


def connection_refusal(
    config: SocketConfig,
    sessions: Mapping[str, Any],
    client_id: str,
    principal_key: str,
    per_principal: Mapping[str, int],
) -> str | None:
    """Why a new socket of ``client_id``/``principal_key`` is over a limit, or None."""
    replacing = sessions.get(client_id)
    total = len(sessions) - (replacing is not None)
    if total >= config.max_connections:
        return f"this gateway replica has {total} sockets, at most {config.max_connections}"
    if principal_key:
        mine = per_principal.get(principal_key, 0)
        if replacing is not None and getattr(replacing, "principal_key", "") == principal_key:
            mine -= 1
        if mine >= config.max_connections_per_principal:
            return (
                f"{principal_key!r} has {mine} sockets on this gateway replica, at most "
                f"{config.max_connections_per_principal}"
            )
    return None


async def refuse(websocket: WebSocket, code: int, error_code: str, message: str) -> None:
    """Say why in an ``error`` frame and close with ``code`` (accepting first if need be):
    browsers cannot read a refused handshake."""
    from starlette.websockets import WebSocketState

    with contextlib.suppress(Exception):  # the peer may be gone already
        if websocket.client_state is WebSocketState.CONNECTING:
            await websocket.accept()
        await websocket.send_text(encode(error_reply(None, error_code, message)))
        await websocket.close(code, close_reason(message))


async def refuse_connection(websocket: WebSocket, message: str) -> None:
    await refuse(websocket, CloseCode.TOO_MANY_CONNECTIONS, TooManyConnectionsError.code, message)
