"""The gateway replica's listening socket: a taken port is named at once (no Ray)."""

from __future__ import annotations

import socket
import threading

import pytest

from control_plane.gateway.replica_server import bind, check_free


def taken_port() -> tuple[socket.socket, int]:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    return holder, holder.getsockname()[1]


def test_a_taken_port_is_refused_with_its_address():
    holder, port = taken_port()
    with holder, pytest.raises(OSError, match=f"127.0.0.1:{port}"):
        check_free("127.0.0.1", port)


def test_a_free_port_is_listened_on():
    holder, port = taken_port()
    holder.close()
    sock = bind("127.0.0.1", port, patience=0)
    with sock:
        assert sock.getsockname()[1] == port
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass


def test_bind_waits_for_a_port_that_is_being_given_up():
    holder, port = taken_port()
    threading.Timer(0.3, holder.close).start()
    with bind("127.0.0.1", port, patience=30.0) as sock:
        assert sock.getsockname()[1] == port
