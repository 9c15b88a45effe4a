"""Credentials: the shared token and the signed tokens made from it. No Ray here.

Two kinds of token open the gateway:

* the **shared token** of today (``--token``, ``CONTROL_PLANE_TOKEN`` or
  ``~/.control_plane/token``): the admin credential of a single-user install;
* **signed tokens** (JWT, HS256) for principals: ``control-plane token create --sub alice
  --role operator --ttl 8h``. Their key is derived from the shared token (HMAC-SHA256), so
  whoever holds the shared token can make them without asking the server, and changing the
  shared token revokes every signed one.

The gateway keeps neither token in its init args (Serve stores those): it gets a
:class:`Credentials`, which holds the shared token's SHA-256 digest and the signing key, from
Ray's internal KV (``gateway/auth.py``), and its ``repr`` shows neither.

Decoding is strict: one algorithm (``alg: none`` and every other one are refused before the
signature is looked at), ``exp``, ``iat``, ``sub`` and ``role`` required, a known role, a
plain subject. Each refusal names its reason, never the token.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import jwt

from control_plane.core.errors import AuthError
from control_plane.core.principals import EVERY_OWNER, SHARED_ADMIN, Principal, Role

ALGORITHM = "HS256"
ALGORITHMS = [ALGORITHM]  # the one list decode accepts
ISSUER = "control-plane"
REQUIRED_CLAIMS = ["exp", "iat", "sub", "role"]
MAX_TTL = 366 * 86400.0
LEEWAY = 5.0  # seconds of clock skew between the machine that signed and the gateway
SUBJECT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_KEY_LABEL = b"control-plane signed tokens v1"
_TTL_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw]?)")
_TTL_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_ttl(text: str) -> float:
    """``"8h"``, ``"30m"``, ``"2d"``, ``"90"`` (seconds) as seconds."""
    match = _TTL_RE.fullmatch(text.strip().lower())
    if match is None:
        raise ValueError(f"bad duration {text!r}: use a number with s, m, h, d or w (8h)")
    seconds = float(match[1]) * _TTL_UNITS[match[2]]
    if not 0 < seconds <= MAX_TTL:
        raise ValueError(f"a token lives more than 0 s and at most 366 days, not {text!r}")
    return seconds


def check_subject(sub: str) -> str:
    if not SUBJECT_RE.fullmatch(sub):
        raise ValueError(
            f"bad subject {sub!r}: 1-64 of letters, digits, '.', '_', '@', '-' "
            "(starting with a letter or digit)"
        )
    return sub


def check_see(owners: Iterable[str]) -> list[str]:
    return sorted({o if o == EVERY_OWNER else check_subject(o) for o in owners})


def looks_signed(token: str) -> bool:
    return token.count(".") == 2


@dataclass(frozen=True, repr=False)
class Credentials:
    """What a gateway checks tokens with; holds no token itself."""

    shared_digest: bytes
    key: bytes

    @classmethod
    def from_token(cls, shared_token: str) -> Credentials:
        raw = shared_token.encode()
        return cls(
            hashlib.sha256(raw).digest(),
            hmac.new(raw, _KEY_LABEL, hashlib.sha256).digest(),
        )

    def __repr__(self) -> str:
        return "Credentials(<hidden>)"

    def to_bytes(self) -> bytes:
        return self.shared_digest + self.key

    @classmethod
    def from_bytes(cls, blob: bytes) -> Credentials:
        if len(blob) != 64:
            raise ValueError("stored credentials are not 64 bytes")
        return cls(blob[:32], blob[32:])

    def is_shared(self, token: str) -> bool:
        return hmac.compare_digest(hashlib.sha256(token.encode()).digest(), self.shared_digest)

    def principal(self, token: str | None, now: float | None = None) -> Principal:
        """Who ``token`` stands for; :class:`AuthError` naming why when nobody."""
        if not token:
            raise AuthError("missing token: send 'Authorization: Bearer <token>'")
        if self.is_shared(token):
            return SHARED_ADMIN
        if not looks_signed(token):
            raise AuthError("wrong token")
        return self.decode(token, now)

    def sign(
        self,
        sub: str,
        role: Role | str,
        ttl: float,
        see: Iterable[str] = (),
        now: float | None = None,
    ) -> str:
        """A signed token for ``sub`` with ``role`` that expires ``ttl`` seconds from now."""
        now = time.time() if now is None else now
        if not 0 < ttl <= MAX_TTL:
            raise ValueError("ttl must be more than 0 s and at most 366 days")
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "sub": check_subject(sub),
            "role": Role(role).value,
            "iat": int(now),
            "exp": int(now + ttl),
        }
        owners = check_see(see)
        if owners:
            claims["see"] = owners
        return jwt.encode(claims, self.key, algorithm=ALGORITHM)

    def session_token(self, principal: Principal, ttl: float, now: float | None = None) -> str:
        """A signed token for a browser session (the cookie): the principal's, expiring at
        ``ttl`` from now or when the principal's own token does, whichever comes first."""
        now = time.time() if now is None else now
        if principal.expires_at is not None:
            ttl = min(ttl, principal.expires_at - now)
        if ttl <= 0:
            raise AuthError("token expired")
        see = [o for o in principal.see if o != principal.sub]
        return self.sign(principal.sub, principal.role, ttl, see, now)

    def decode(self, token: str, now: float | None = None) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as e:
            raise AuthError(f"malformed token: {e}") from e
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise AuthError(f"token algorithm {alg!r} is not accepted (only {ALGORITHM})")
        try:
            claims = jwt.decode(
                token,
                self.key,
                algorithms=ALGORITHMS,
                issuer=ISSUER,
                leeway=LEEWAY,
                options={
                    "require": REQUIRED_CLAIMS,
                    "verify_exp": now is None,  # a given `now` is checked below
                    "verify_iat": now is None,
                },
            )
        except jwt.ExpiredSignatureError as e:
            raise AuthError("token expired") from e
        except jwt.InvalidSignatureError as e:
            raise AuthError("token signature does not match") from e
        except jwt.MissingRequiredClaimError as e:
            raise AuthError(f"token has no {e.claim!r} claim") from e
        except jwt.InvalidTokenError as e:
            raise AuthError(f"invalid token: {e}") from e
        exp = float(claims["exp"])
        if now is not None and exp + LEEWAY < now:
            raise AuthError("token expired")
        try:
            role = Role(claims["role"])
            sub = check_subject(str(claims["sub"]))
            see = check_see(claims.get("see") or ())
        except (ValueError, TypeError) as e:
            raise AuthError(f"invalid token claims: {e}") from e
        return Principal.make(sub, role, see, expires_at=exp)
