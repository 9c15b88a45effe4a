"""The seed's import path: ``from control_plane.websocket import get_ws_manager``.

The manager lives in :mod:`control_plane.gateway.manager`; this module only re-exports it.
"""

from control_plane.gateway.manager import WebSocketManager, get_ws_manager

__all__ = ["WebSocketManager", "get_ws_manager"]
