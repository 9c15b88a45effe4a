"""Tokens, the Origin check and --no-auth (no server needed)."""

from __future__ import annotations

import stat

import pytest

from control_plane.core.errors import AuthError
from control_plane.core.principals import SHARED_ADMIN, Role
from control_plane.core.tokens import Credentials
from control_plane.gateway import auth
from control_plane.gateway.auth import (
    TOKEN_ENV,
    allowed_hosts,
    authenticate,
    bearer_token,
    check_host,
    check_no_auth_allowed,
    check_origin,
    cookie_name,
    host_name,
    resolve_token,
)

TOKEN = "s3cret-token"
CREDENTIALS = Credentials.from_token(TOKEN)
COOKIE_NAME = cookie_name(8000)


@pytest.fixture(autouse=True)
def no_token_env(monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)


@pytest.fixture(autouse=True)
def never_touch_the_real_home(monkeypatch, tmp_path):
    # A test that forgets token_file must not write under the user's home.
    monkeypatch.setattr(auth, "TOKEN_FILE", tmp_path / "home" / ".control_plane" / "token")


# --- resolve_token --------------------------------------------------------------------------


def test_an_explicit_token_wins_over_env_and_file(monkeypatch, tmp_path):
    monkeypatch.setenv(TOKEN_ENV, "from-env")
    path = tmp_path / "token"
    path.write_text("from-file\n")
    assert resolve_token("explicit", path) == "explicit"


def test_the_environment_wins_over_the_file(monkeypatch, tmp_path):
    monkeypatch.setenv(TOKEN_ENV, "from-env")
    path = tmp_path / "token"
    path.write_text("from-file\n")
    assert resolve_token(None, path) == "from-env"


def test_an_empty_explicit_token_or_env_falls_through(monkeypatch, tmp_path):
    monkeypatch.setenv(TOKEN_ENV, "")
    path = tmp_path / "token"
    path.write_text("from-file\n")
    assert resolve_token("", path) == "from-file"


def test_a_kept_token_is_read_from_the_file(tmp_path):
    path = tmp_path / "token"
    path.write_text("  kept-token \n")
    assert resolve_token(None, path) == "kept-token"


def test_a_new_token_is_generated_and_kept_with_mode_0600(tmp_path):
    path = tmp_path / "dir" / "token"
    token = resolve_token(None, path)
    assert len(token) >= 32
    assert path.read_text().strip() == token
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not stat.S_IMODE(path.parent.stat().st_mode) & 0o077
    assert resolve_token(None, path) == token  # the same one next time


def test_an_empty_token_file_gets_a_new_token(tmp_path):
    path = tmp_path / "token"
    path.write_text("\n")
    token = resolve_token(None, path)
    assert token
    assert path.read_text().strip() == token


def test_two_generated_tokens_differ(tmp_path):
    assert resolve_token(None, tmp_path / "a") != resolve_token(None, tmp_path / "b")


def test_without_a_token_file_argument_the_default_location_is_used():
    token = resolve_token()
    assert auth.TOKEN_FILE.read_text().strip() == token


# --- check_origin ---------------------------------------------------------------------------


def test_no_origin_is_a_non_browser_client_and_allowed():
    check_origin(None, "localhost:8000")
    check_origin(None, None)


@pytest.mark.parametrize(
    ("origin", "host"),
    [
        ("http://localhost:8000", "localhost:8000"),
        ("http://127.0.0.1:8000", "127.0.0.1:8000"),
        ("https://plane.example.com", "plane.example.com"),
        ("http://LOCALHOST:8000", "localhost:8000"),
        ("http://[::1]:8000", "[::1]:8000"),
    ],
)
def test_the_servers_own_origin_is_allowed(origin, host):
    check_origin(origin, host)


@pytest.mark.parametrize(
    ("origin", "host"),
    [
        ("http://evil.example", "localhost:8000"),
        ("http://localhost:9999", "localhost:8000"),  # another port is another origin
        ("http://localhost:8000.evil.example", "localhost:8000"),
        ("http://127.0.0.1:8000", "localhost:8000"),  # judged from the Host actually used
        ("file://localhost:8000", "localhost:8000"),
        ("http://localhost:8000", None),
    ],
)
def test_a_foreign_origin_is_refused(origin, host):
    with pytest.raises(AuthError, match="not allowed"):
        check_origin(origin, host)


def test_the_null_origin_is_refused_even_when_everything_is_allowed():
    with pytest.raises(AuthError, match="null"):
        check_origin("null", "localhost:8000", allowed=["*", "null"])


def test_configured_origins_are_allowed():
    allowed = ["https://dash.example.com/", "http://localhost:3000"]
    check_origin("https://dash.example.com", "localhost:8000", allowed)
    check_origin("http://localhost:3000", "localhost:8000", allowed)
    with pytest.raises(AuthError):
        check_origin("https://other.example.com", "localhost:8000", allowed)


def test_a_star_allows_every_origin_but_null():
    check_origin("https://anything.example", "localhost:8000", ["*"])


# --- authenticate ---------------------------------------------------------------------------


def check(headers=None, cookies=None, query=None, credentials=CREDENTIALS):
    return authenticate(
        credentials=credentials,
        headers=headers or {},
        cookies=cookies or {},
        query=query or {},
        cookie=COOKIE_NAME,
    )


def test_a_bearer_token_authenticates_as_the_shared_admin():
    assert check(headers={"authorization": f"Bearer {TOKEN}"}) is SHARED_ADMIN
    assert check(headers={"authorization": f"bearer {TOKEN}"}) is SHARED_ADMIN


def test_the_cookie_authenticates_and_is_named_for_the_port():
    session = CREDENTIALS.session_token(SHARED_ADMIN, 60)
    assert session != TOKEN
    principal = check(cookies={COOKIE_NAME: session})
    assert (principal.sub, principal.role) == ("admin", Role.ADMIN)
    assert COOKIE_NAME == "cp_session_8000" and cookie_name(8001) != COOKIE_NAME
    with pytest.raises(AuthError):  # another gateway's cookie is not this one's
        check(cookies={cookie_name(8001): session})


def test_a_query_token_authenticates():
    check(query={"token": TOKEN})


def test_a_signed_token_authenticates_as_its_principal():
    token = CREDENTIALS.sign("alice", "operator", 60, ["bob"])
    principal = check(headers={"authorization": f"Bearer {token}"})
    assert principal.sub == "alice" and principal.role is Role.OPERATOR
    assert principal.see == {"alice", "bob"} and principal.expires_at is not None


def test_one_right_place_is_enough():
    check(headers={"authorization": "Bearer wrong"}, cookies={COOKIE_NAME: TOKEN})


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"headers": {"authorization": "Bearer wrong"}},
        {"headers": {"authorization": f"Basic {TOKEN}"}},
        {"headers": {"authorization": TOKEN}},
        {"headers": {"authorization": "Bearer "}},
        {"cookies": {COOKIE_NAME: TOKEN + "x"}},
        {"cookies": {"other": TOKEN}},
        {"query": {"token": TOKEN[:-1]}},
        {"query": {"token": ""}},
    ],
)
def test_a_missing_or_wrong_token_is_refused(kwargs):
    with pytest.raises(AuthError, match="token") as info:
        check(**kwargs)
    assert info.value.code == "unauthorized"


def test_no_auth_lets_everyone_in_as_the_admin():
    assert check(credentials=None) is SHARED_ADMIN


def test_bearer_token_parsing():
    assert bearer_token({"authorization": "Bearer abc"}) == "abc"
    assert bearer_token({"authorization": "Bearer  abc "}) == "abc"
    assert bearer_token({"authorization": "Token abc"}) is None
    assert bearer_token({}) is None


# --- --no-auth ------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"])
def test_no_auth_is_allowed_on_loopback(host):
    check_no_auth_allowed(host)


@pytest.mark.parametrize("host", ["", "0.0.0.0", "::", "192.168.1.10", "example.com", "10.0.0.1"])
def test_no_auth_is_refused_on_other_addresses(host):
    with pytest.raises(AuthError, match="--no-auth"):
        check_no_auth_allowed(host)


# --- Host allowlist (DNS rebinding) ----------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("localhost:8000", "localhost"),
        ("127.0.0.1", "127.0.0.1"),
        ("[::1]:8000", "::1"),
        ("Plane.Example.COM:443", "plane.example.com"),
        ("::1", "::1"),
    ],
)
def test_host_names_are_read_without_the_port(header, name):
    assert host_name(header) == name


def test_a_loopback_gateway_answers_loopback_names_and_configured_ones_only():
    allowed = allowed_hosts("127.0.0.1", ["plane.example.com"])
    for header in ("localhost:8000", "127.0.0.1:8000", "[::1]:8000", "plane.example.com"):
        check_host(header, allowed)
    for header in ("evil.example:8000", "127.0.0.1.evil.example", "", None):
        with pytest.raises(AuthError):
            check_host(header, allowed)


def test_a_rebinding_page_is_refused_even_when_it_resolves_to_us():
    # The page at http://attacker.example:8000 resolves its name to 127.0.0.1: the browser
    # sends Host: attacker.example:8000 (and a matching Origin, which the Origin rule passes).
    allowed = allowed_hosts("127.0.0.1", [])
    check_origin("http://attacker.example:8000", "attacker.example:8000")
    with pytest.raises(AuthError, match="Host"):
        check_host("attacker.example:8000", allowed)


def test_a_gateway_on_every_interface_answers_the_nodes_address():
    allowed = allowed_hosts("0.0.0.0", [], node_ip="10.0.0.5")
    check_host("10.0.0.5:8000", allowed)
    with pytest.raises(AuthError):
        check_host("10.0.0.6:8000", allowed)
    check_host("anything:1", allowed_hosts("0.0.0.0", ["*"]))


def test_a_non_ascii_origin_is_refused_with_a_short_message():
    with pytest.raises(AuthError) as info:
        check_origin("http://" + "é" * 500, "localhost:8000")
    assert len(info.value.message.encode()) < 200
