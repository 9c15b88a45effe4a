"""A deadline from TCP open to a finished WebSocket upgrade.

uvicorn bounds an idle keep-alive connection (``timeout_keep_alive``, armed after a
response) but not the first request: a peer that opens TCP and sends nothing, or half a
request head, or whose upgrade the app has not accepted, holds a connection (and a file
descriptor) for ever. :func:`deadline_protocol` makes uvicorn's HTTP protocol class drop
such a connection ``timeout`` seconds after it opened, unless by then a request head has
come (a plain HTTP request is uvicorn's to time) or the WebSocket upgrade completed.
After the upgrade, ``SocketConfig.subscribe_deadline`` closes a socket that never
subscribes (4001).
"""

from __future__ import annotations

import asyncio
from typing import Any

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _Base
except ImportError:  # pragma: no cover - httptools is optional for uvicorn
    from uvicorn.protocols.http.h11_impl import H11Protocol as _Base  # type: ignore[assignment]


def deadline_protocol(timeout: float) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol, dropping connections not upgraded within ``timeout`` s."""

    class HandshakeDeadlineProtocol(_Base):
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._handshake_timer: asyncio.TimerHandle | None = (
                asyncio.get_running_loop().call_later(timeout, self._handshake_expired)
            )

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_handshake_timer()
            super().connection_lost(exc)

        def _cancel_handshake_timer(self) -> None:
            timer = getattr(self, "_handshake_timer", None)
            if timer is not None:
                timer.cancel()
                self._handshake_timer = None

        def _handshake_expired(self) -> None:
            self._handshake_timer = None
            transport = self.transport
            if transport is None or transport.is_closing():
                return
            current = transport.get_protocol()
            if current is self:
                if self.cycle is None:  # no request head in time
                    transport.close()
            elif not getattr(current, "handshake_complete", True):
                transport.close()  # upgraded, but the app has not accepted in time

    return HandshakeDeadlineProtocol
