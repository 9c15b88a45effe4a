"""Who is connecting: the shared token, signed tokens, the session cookie, and the browser
Origin and Host checks.

The shared token comes from ``--token`` / ``token=``, else ``CONTROL_PLANE_TOKEN``, else one
generated once and kept in ``~/.control_plane/token`` (mode 0600); it is the admin's. Signed
tokens (``core/tokens.py``) stand for principals with roles. Python clients send
``Authorization: Bearer <token>``; a browser that opened the printed URL (``/?token=...``) gets
an HttpOnly cookie holding a short-lived signed session token (never the token it opened the
URL with), named for the gateway's port, so same-origin page scripts connect with a plain
``new WebSocket(url)``.

The gateway's replicas get the :class:`~control_plane.core.tokens.Credentials` through Ray's
internal KV (:func:`store_credentials`), not through their init args, which Serve keeps and
shows.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
from collections.abc import Iterable, Mapping
from pathlib import Path
from urllib.parse import urlsplit

from control_plane.core.errors import AuthError
from control_plane.core.principals import SHARED_ADMIN, Principal
from control_plane.core.tokens import Credentials

TOKEN_ENV = "CONTROL_PLANE_TOKEN"
COOKIE_PREFIX = "cp_session_"
SESSION_TTL = 12 * 3600.0  # a browser session's cookie, at most (less if its token ends)
CREDENTIALS_KEY = b"control_plane/credentials"
CREDENTIALS_NAMESPACE = "control_plane"
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


def cookie_name(port: int) -> str:
    """Browsers send a host's cookies to every port of it: one name per gateway port."""
    return f"{COOKIE_PREFIX}{port}"


def store_credentials(credentials: Credentials | None) -> None:
    """Put the gateway's credentials in Ray's internal KV (None: ``--no-auth``)."""
    from ray.experimental import internal_kv

    blob = b"" if credentials is None else credentials.to_bytes()
    internal_kv._internal_kv_put(
        CREDENTIALS_KEY, blob, overwrite=True, namespace=CREDENTIALS_NAMESPACE
    )


def load_credentials() -> Credentials | None:
    """The credentials :func:`store_credentials` left (None: ``--no-auth``)."""
    from ray.experimental import internal_kv

    blob = internal_kv._internal_kv_get(CREDENTIALS_KEY, namespace=CREDENTIALS_NAMESPACE)
    if blob is None:
        raise AuthError("the control plane's credentials are not in Ray's KV (start it again)")
    return Credentials.from_bytes(blob) if blob else None


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine only (an empty host binds every interface)."""
    if host == "localhost":
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


def check_origin(origin: str | None, host: str | None, allowed: Iterable[str] = ()) -> None:
    """Refuse a browser handshake from another site (cross-site WebSocket hijacking).

    No ``Origin`` header means a non-browser client (which still needs the token). The
    server's own origin is judged from the ``Host`` the browser used (which
    :func:`check_host` has checked first, against DNS rebinding), so ``localhost`` and
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
    raise AuthError(f"Origin {origin[:80]!r} is not allowed")


def host_name(host_header: str) -> str:
    """The name part of a ``Host`` header: ``[::1]:8000`` -> ``::1``, ``a.b:80`` -> ``a.b``."""
    value = host_header.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def allowed_hosts(
    bound: str, configured: Iterable[str], node_ip: str | None = None
) -> frozenset[str]:
    """The ``Host`` names a gateway bound to ``bound`` answers: the loopback names, the
    bound address (with the node's address when it binds every interface), and the names
    configured with ``--allowed-host`` (``*``: any, for a proxy that sets its own)."""
    names = set(LOOPBACK_NAMES)
    names.update(host_name(h) if h != "*" else "*" for h in configured)
    if bound not in ("", "0.0.0.0", "::"):
        names.add(host_name(bound))
    elif node_ip:
        names.add(host_name(node_ip))
    return frozenset(names)


def check_host(host_header: str | None, allowed: frozenset[str]) -> None:
    """Refuse a request whose ``Host`` is not one of ours: a DNS-rebinding page reaches us
    under its own name."""
    if "*" in allowed:
        return
    if not host_header:
        raise AuthError("the request has no Host header")
    if host_name(host_header) not in allowed:
        raise AuthError(f"Host {host_header[:80]!r} is not allowed (see --allowed-host)")


def presented_tokens(
    headers: Mapping[str, str], cookies: Mapping[str, str], query: Mapping[str, str], cookie: str
) -> list[str]:
    return [t for t in (bearer_token(headers), cookies.get(cookie), query.get("token")) if t]


def authenticate(
    *,
    credentials: Credentials | None,
    headers: Mapping[str, str],
    cookies: Mapping[str, str],
    query: Mapping[str, str],
    cookie: str,
    now: float | None = None,
) -> Principal:
    """Who the request is from (header, cookie, query, in that order); :class:`AuthError`
    naming the first token's problem when none is good."""
    if credentials is None:  # --no-auth: this machine's user, who is the admin
        return SHARED_ADMIN
    tokens = presented_tokens(headers, cookies, query, cookie)
    if not tokens:
        raise AuthError("missing token: send 'Authorization: Bearer <token>'")
    first: AuthError | None = None
    for token in tokens:
        try:
            return credentials.principal(token, now)
        except AuthError as e:
            first = first or e
    assert first is not None
    raise first
