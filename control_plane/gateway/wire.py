"""Frames written straight to the socket: one encoded text frame shared by every socket
that gets it, and no task on the way when the socket can take it now.

Through ASGI, each frame to each socket costs an ``await websocket.send_text`` in a writer
task of its own, and uvicorn then encodes the text to UTF-8, wraps it in a
``websockets`` ``Frame`` and serialises that (three copies of the payload per socket). A
server's text frame is the same bytes for every socket (no mask; no per-message deflate,
which the gateway's server turns off), so the fan-out builds it once
(:func:`text_frame`) and hands those bytes to each socket's transport. Measured with
``python -m benchmarks.socket_cost`` (2,000 sockets, 1 event/s): 56 µs of the replica's
CPU per event per socket through a writer task and ASGI, against about 5 µs written here.

This is only for a socket that can take the frame at once: an open connection of
uvicorn's ``websockets-sansio`` protocol (the one :class:`ReplicaServer` runs) whose
transport is not paused (its buffer below the high-water mark) and on which no close was
sent or received. Otherwise :func:`direct` says so and the frame goes the ASGI way, in
order, from the socket's queue; so a client that stops reading still fills its transport,
pauses it, and is judged slow as before. Any other server (tests' fake sockets, Serve's
proxy) gets no direct writes at all.
"""

from __future__ import annotations

from typing import Any

from websockets.protocol import State

_OPEN = State.OPEN
_TEXT_FIN = 0x81  # FIN + opcode 1 (text)


def text_frame(text: str) -> bytes:
    """The bytes of an unmasked, unfragmented RFC 6455 text frame carrying ``text``."""
    payload = text.encode()
    n = len(payload)
    if n < 126:
        header = bytes((_TEXT_FIN, n))
    elif n < 1 << 16:
        header = bytes((_TEXT_FIN, 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((_TEXT_FIN, 127)) + n.to_bytes(8, "big")
    return header + payload


def server_protocol(websocket: Any) -> Any:
    """The uvicorn ``websockets-sansio`` protocol object behind a starlette ``WebSocket``
    (reached through the bound ``send`` the app was given), or None for any other server
    or a connection with a negotiated extension."""
    protocol = getattr(getattr(websocket, "_send", None), "__self__", None)
    conn = getattr(protocol, "conn", None)
    if (
        conn is None
        or getattr(conn, "extensions", None)
        or not hasattr(protocol, "writable")
        or not hasattr(protocol, "close_sent")
        or getattr(protocol, "transport", None) is None
    ):
        return None
    return protocol


def direct(protocol: Any) -> bool:
    """Whether a frame can be written to ``protocol``'s transport now, as uvicorn's own
    ``send`` would write it without waiting."""
    return (
        protocol.writable.is_set()
        and not protocol.close_sent
        and not protocol.disconnected
        and protocol.conn.state is _OPEN
        and not protocol.conn.expect_continuation_frame
        and not protocol.transport.is_closing()
    )


def write(protocol: Any, frame: bytes) -> None:
    """Write a frame from :func:`text_frame` (check :func:`direct` first)."""
    protocol.transport.write(frame)


def release_handshake(protocol: Any) -> None:
    """Drop the handshake's request and response that uvicorn's protocol keeps for the
    life of the connection (about 3 KB of headers a socket); it reads them only during
    the handshake, which is complete once the socket is accepted."""
    if getattr(protocol, "handshake_complete", False):
        for name in ("request", "response"):
            if hasattr(protocol, name):
                setattr(protocol, name, None)
