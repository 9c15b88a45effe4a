"""One shared token, as Ray's dashboard and Jupyter do it, and the browser Origin check.

The token comes from ``--token`` / ``token=``, else ``CONTROL_PLANE_TOKEN``, else one generated
once and kept in ``~/.control_plane/token`` (mode 0600). Python clients send
``Authorization: Bearer <token>``; a browser that opened the printed URL (``/?token=...``) gets
an HttpOnly cookie, so same-origin page scripts connect with a plain ``new WebSocket(url)``.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
from collections.abc import Iterable, Mapping
from pathlib import Path
from urllib.parse import urlsplit

from control_plane.core.errors import AuthError

TOKEN_ENV = "CONTROL_PLANE_TOKEN"
COOKIE_NAME = "cp_token"
TOKEN_FILE = Path.home() / ".control_plane" / "token"


def resolve_token(token: str | None = None, token_file: Path | None = None) -> str:
    """The token to require: explicit, else the environment, else the kept (or a new) one."""
    if token:
        return token
    env = os.environ.get(TOKEN_ENV)
    if env:
        return env
    path = token_file or TOKEN_FILE
    try:
        kept = path.read_text().strip()
        if kept:
            return kept
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    new = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(new + "\n")
    return new


def find_token(token: str | None = None, token_file: Path | None = None) -> str | None:
    """The token a client presents: explicit, else the environment, else the kept one if
    there is one (a client never makes one up)."""
    if token:
        return token
    env = os.environ.get(TOKEN_ENV)
    if env:
        return env
    try:
        return (token_file or TOKEN_FILE).read_text().strip() or None
    except OSError:
        return None


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_no_auth_allowed(host: str) -> None:
    """``--no-auth`` is for development on this machine only."""
    if not is_loopback(host):
        raise AuthError(f"--no-auth is refused when binding a non-loopback address ({host})")


def bearer_token(headers: Mapping[str, str]) -> str | None:
    value = headers.get("authorization") or ""
    scheme, _, credentials = value.partition(" ")
    if scheme.lower() == "bearer" and credentials:
        return credentials.strip()
    return None


def token_matches(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def check_origin(origin: str | None, host: str | None, allowed: Iterable[str] = ()) -> None:
    """Refuse a browser handshake from another site (cross-site WebSocket hijacking).

    No ``Origin`` header means a non-browser client (which still needs the token). The
    server's own origin is judged from the ``Host`` the browser used, so ``localhost`` and
    ``127.0.0.1`` both work; ``null`` (sandboxed frames, files) is always refused.
    """
    if origin is None:
        return
    if origin == "null":
        raise AuthError("Origin 'null' is not allowed")
    allowed_set = {o.rstrip("/") for o in allowed}
    if "*" in allowed_set or origin.rstrip("/") in allowed_set:
        return
    parts = urlsplit(origin)
    if parts.scheme in ("http", "https") and host and parts.netloc.lower() == host.lower():
        return
    raise AuthError(f"Origin {origin!r} is not allowed")


def authenticate(
    *,
    expected: str | None,
    headers: Mapping[str, str],
    cookies: Mapping[str, str],
    query: Mapping[str, str],
) -> None:
    """Raise :class:`AuthError` unless the request carries the token (header, cookie, query)."""
    if expected is None:  # --no-auth
        return
    for given in (bearer_token(headers), cookies.get(COOKIE_NAME), query.get("token")):
        if token_matches(given, expected):
            return
    raise AuthError("missing or wrong token: send 'Authorization: Bearer <token>'")
