"""Signed tokens: every bad credential is refused with its reason (no server needed)."""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest

from control_plane.core.errors import AuthError
from control_plane.core.principals import SHARED_ADMIN, Role
from control_plane.core.tokens import Credentials, parse_ttl

SHARED = "shared-s3cret"
CREDENTIALS = Credentials.from_token(SHARED)
NOW = 1_800_000_000.0


def claims(**extra: object) -> dict[str, object]:
    base: dict[str, object] = {
        "iss": "control-plane",
        "sub": "alice",
        "role": "operator",
        "iat": int(NOW),
        "exp": int(NOW + 3600),
    }
    base.update(extra)
    return {k: v for k, v in base.items() if v is not None}


def refused(token: str, match: str, now: float = NOW) -> None:
    with pytest.raises(AuthError, match=match) as info:
        CREDENTIALS.principal(token, now)
    assert info.value.code == "unauthorized"
    assert not token or token not in info.value.message


def test_a_signed_token_gives_its_principal():
    token = CREDENTIALS.sign("alice", "operator", 3600, ["bob"], now=NOW)
    principal = CREDENTIALS.principal(token, NOW + 10)
    assert principal.sub == "alice" and principal.role is Role.OPERATOR
    assert principal.see == {"alice", "bob"}
    assert principal.expires_at == NOW + 3600


def test_the_shared_token_is_the_admin():
    assert CREDENTIALS.principal(SHARED) is SHARED_ADMIN


def test_no_token_and_a_wrong_one_are_refused():
    refused("", "missing")
    refused("not-the-token", "wrong token")


def test_an_expired_token_is_refused():
    token = CREDENTIALS.sign("alice", "viewer", 60, now=NOW)
    CREDENTIALS.principal(token, NOW + 30)
    refused(token, "expired", now=NOW + 120)
    # And with the real clock, through PyJWT's own check.
    old = CREDENTIALS.sign("alice", "viewer", 60, now=time.time() - 3600)
    with pytest.raises(AuthError, match="expired"):
        CREDENTIALS.principal(old)


def test_a_token_signed_with_another_key_is_refused():
    other = Credentials.from_token("another-shared-token")
    refused(other.sign("alice", "admin", 60, now=NOW), "signature")


def test_a_tampered_payload_is_refused():
    token = CREDENTIALS.sign("alice", "viewer", 3600, now=NOW)
    head, _, sig = token.split(".")
    forged = base64.urlsafe_b64encode(json.dumps(claims(role="admin")).encode()).rstrip(b"=")
    refused(f"{head}.{forged.decode()}.{sig}", "signature")


def test_alg_none_is_refused():
    token = jwt.encode(claims(role="admin"), None, algorithm="none")
    refused(token, "algorithm 'none'")


@pytest.mark.parametrize("alg", ["HS384", "HS512"])
def test_an_algorithm_not_in_the_list_is_refused_even_with_the_right_key(alg):
    token = jwt.encode(claims(), CREDENTIALS.key * 2, algorithm=alg)
    refused(token, f"algorithm '{alg}'")


@pytest.mark.parametrize("missing", ["exp", "sub", "role", "iat"])
def test_a_token_without_a_required_claim_is_refused(missing):
    token = jwt.encode(claims(**{missing: None}), CREDENTIALS.key, algorithm="HS256")
    refused(token, missing)


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ({"role": "root"}, "claims"),
        ({"sub": "alice~x"}, "claims"),
        ({"sub": ""}, "claims|sub"),
        ({"iss": "someone-else"}, "invalid token"),
        ({"see": ["bad owner!"]}, "claims"),
    ],
)
def test_bad_claims_are_refused(extra, match):
    token = jwt.encode(claims(**extra), CREDENTIALS.key, algorithm="HS256")
    refused(token, match)


def test_a_malformed_token_is_refused():
    refused("a.b.c", "malformed|invalid")


def test_credentials_hide_their_secrets():
    assert SHARED not in repr(CREDENTIALS)
    assert CREDENTIALS.key.hex() not in repr(CREDENTIALS)
    assert Credentials.from_bytes(CREDENTIALS.to_bytes()) == CREDENTIALS


def test_a_session_token_ends_no_later_than_the_token_it_came_from():
    token = CREDENTIALS.sign("alice", "viewer", 600, now=NOW)
    principal = CREDENTIALS.principal(token, NOW)
    session = CREDENTIALS.principal(CREDENTIALS.session_token(principal, 3600, NOW), NOW)
    assert session.sub == "alice" and session.expires_at == NOW + 600


@pytest.mark.parametrize(("text", "seconds"), [("8h", 28800), ("30m", 1800), ("90", 90)])
def test_ttls_are_parsed(text, seconds):
    assert parse_ttl(text) == seconds


@pytest.mark.parametrize("text", ["0", "-1h", "400d", "8x", ""])
def test_bad_ttls_are_refused(text):
    with pytest.raises(ValueError):
        parse_ttl(text)
