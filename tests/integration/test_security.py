"""Principals, roles and refusals on the real gateway, judged on the wire with raw sockets
and plain HTTP: every bad credential is refused before any event, each principal sees and
steers only what its role and the jobs' owners allow, and every refusal is audited."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import httpx
import jwt
import pytest

import control_plane
from control_plane.core.tokens import Credentials
from tests.conftest import TOKEN
from tests.integration.wsclient import TestSocket

pytestmark = pytest.mark.ray

CREDENTIALS = Credentials.from_token(TOKEN)


def signed(sub: str, role: str, ttl: float = 600, see: tuple[str, ...] = ()) -> str:
    return CREDENTIALS.sign(sub, role, ttl, see)


def forged(alg: str, key: Any, **claims: Any) -> str:
    now = int(time.time())
    body = {"iss": "control-plane", "sub": "mallory", "role": "admin", "iat": now}
    body["exp"] = now + 600
    body.update(claims)
    return jwt.encode(body, key, algorithm=alg)


BAD_CREDENTIALS = {
    "none": None,
    "wrong": "not-the-token",
    "expired": CREDENTIALS.sign("alice", "admin", 60, now=time.time() - 3600),
    "bad signature": Credentials.from_token("another-token").sign("alice", "admin", 600),
    "alg none": forged("none", None),
    "alg HS512": forged("HS512", CREDENTIALS.key * 2),
    "no exp": "made in the test",
}


@pytest.fixture(scope="module")
def jobs(plane: Any) -> Any:
    """A long job of alice's and one of carol's."""
    made = {
        owner: control_plane.submit(
            "jobs.examples:countdown", steps=100_000, delay=0.05, job_owner=owner
        )
        for owner in ("alice", "carol")
    }
    yield made
    for handle in made.values():
        with contextlib.suppress(Exception):
            handle.cancel()


@pytest.mark.parametrize("kind", sorted(BAD_CREDENTIALS))
async def test_a_bad_credential_is_refused_before_any_event(plane: Any, kind: str) -> None:
    token = BAD_CREDENTIALS[kind]
    if kind == "no exp":
        now = int(time.time())
        token = jwt.encode(
            {"iss": "control-plane", "sub": "mallory", "role": "admin", "iat": now},
            CREDENTIALS.key,
            algorithm="HS256",
        )
    sock = await TestSocket.open(plane.ws_url, token)
    code, _ = await asyncio.wait_for(sock.closed, 10)
    assert code == 4401
    assert [f["type"] for f in sock.frames] == ["error"]
    assert sock.frames[0]["data"]["code"] == "unauthorized"
    assert not [f for f in sock.frames if "seq" in f]


async def test_a_viewer_sees_whom_it_may_and_steers_nothing(plane: Any, jobs: Any) -> None:
    viewer = await TestSocket.open(plane.ws_url, signed("bob", "viewer", see=("alice",)))
    welcome = await viewer.wait_type("welcome")
    assert welcome["data"]["principal"]["role"] == "viewer"
    assert (await viewer.subscribe(f"job:{jobs['alice'].job_id}"))["type"] == "ack"
    await viewer.wait_type("job.progress", jobs["alice"].job_id)
    refused = await viewer.subscribe(f"job:{jobs['carol'].job_id}", since=0)
    assert refused["type"] == "error" and refused["data"]["code"] == "forbidden"
    pause = await viewer.request({"type": "job.pause", "job_id": jobs["alice"].job_id})
    assert pause["type"] == "error" and pause["data"]["code"] == "forbidden"
    audit = await viewer.subscribe("audit")
    assert audit["data"]["code"] == "forbidden"
    # `*` with a replay from 0: only alice's job among the jobs it is given.
    assert (await viewer.subscribe("*", since=0))["type"] == "ack"
    await asyncio.sleep(1.0)
    job_ids = {f["data"].get("job_id") for f in viewer.events() if f["channel"].startswith("job:")}
    owners = {s.job_id: s.owner for s in await asyncio.to_thread(control_plane.list_jobs)}
    assert jobs["alice"].job_id in job_ids  # other tests of the session may run alice's too
    assert {owners[j] for j in job_ids} == {"alice"}
    assert not [f for f in viewer.events() if f["channel"] == "audit"]
    await viewer.close()


async def test_an_operator_controls_its_own_jobs_only(plane: Any, jobs: Any) -> None:
    carol = await TestSocket.open(plane.ws_url, signed("carol", "operator"))
    mine, theirs = jobs["carol"].job_id, jobs["alice"].job_id
    paused = await carol.request({"type": "job.pause", "job_id": mine})
    assert paused["type"] == "ack", paused
    resumed = await carol.request({"type": "job.resume", "job_id": mine})
    assert resumed["type"] == "ack", resumed
    other = await carol.request({"type": "job.pause", "job_id": theirs})
    assert other["type"] == "error" and other["data"]["code"] == "forbidden"
    assert "alice" not in other["data"]["message"]  # not even whose it is
    broadcast = await carol.request({"type": "broadcast", "event": {"type": "app.note"}})
    assert broadcast["data"]["code"] == "forbidden"
    await carol.close()


async def test_refusals_and_commands_reach_the_admin_only_audit_channel(
    plane: Any, jobs: Any
) -> None:
    admin = await TestSocket.open(plane.ws_url, TOKEN)
    assert (await admin.subscribe("audit"))["type"] == "ack"
    viewer_token = signed("bob", "viewer")
    viewer = await TestSocket.open(plane.ws_url, viewer_token)
    await viewer.request({"type": "job.cancel", "job_id": jobs["carol"].job_id})
    record = await admin.wait_for(
        lambda f: f["type"] == "audit.record" and f["data"]["who"] == "bob", timeout=15
    )
    assert record["data"]["action"] == "job.cancel"
    assert record["data"]["outcome"] == "forbidden"
    assert record["data"]["job_id"] == jobs["carol"].job_id
    assert viewer_token not in str(admin.frames) and TOKEN not in str(admin.frames)
    await viewer.close()
    await admin.close()


async def test_an_expired_token_closes_the_socket_and_a_fresh_one_keeps_it(plane: Any) -> None:
    short = await TestSocket.open(plane.ws_url, signed("dave", "viewer", ttl=2))
    await short.subscribe("system")
    code, reason = await asyncio.wait_for(short.closed, 15)
    assert (code, reason) == (4401, "token expired")

    kept = await TestSocket.open(plane.ws_url, signed("dave", "viewer", ttl=2))
    await kept.subscribe("system")
    refreshed = await kept.request({"type": "auth", "token": signed("dave", "viewer", ttl=600)})
    assert refreshed["type"] == "ack" and refreshed["data"]["principal"]["sub"] == "dave"
    other = await kept.request({"type": "auth", "token": signed("erin", "admin")})
    assert other["data"]["code"] == "forbidden"
    await asyncio.sleep(4)
    assert not kept.closed.done()
    await kept.send({"type": "ping", "id": "still-here"})
    await kept.wait_for(lambda f: f["type"] == "pong" and f["data"]["request_id"] == "still-here")
    await kept.close()


async def test_a_client_id_belongs_to_its_principal(plane: Any) -> None:
    url = f"{plane.ws_url}?client_id=shared-name"
    alice = await TestSocket.open(url, signed("alice", "viewer"))
    alice_id = (await alice.wait_type("welcome"))["data"]["client_id"]
    mallory = await TestSocket.open(url, signed("mallory", "viewer"))
    mallory_id = (await mallory.wait_type("welcome"))["data"]["client_id"]
    assert alice_id != mallory_id
    await asyncio.sleep(0.5)
    assert not alice.closed.done()  # not kicked by another principal naming its id
    again = await TestSocket.open(url, signed("alice", "viewer"))
    assert (await again.wait_type("welcome"))["data"]["client_id"] == alice_id
    code, _ = await asyncio.wait_for(alice.closed, 10)  # replaced by its own new socket
    assert code == 1000
    bad = await TestSocket.open(f"{plane.ws_url}?client_id=" + "x" * 100, TOKEN)
    assert (await asyncio.wait_for(bad.closed, 10))[0] == 4400
    for sock in (mallory, again):
        await sock.close()


async def test_a_foreign_host_is_refused_dns_rebinding(plane: Any) -> None:
    # A page at rebind.example whose name resolves to 127.0.0.1: its Host is its own name.
    sock = await TestSocket.open(
        f"ws://rebind.example:{plane.port}/ws", TOKEN, host="127.0.0.1", port=plane.port
    )
    code, _ = await asyncio.wait_for(sock.closed, 10)
    assert code == 4403 and sock.frames[0]["data"]["code"] == "forbidden_host"
    async with httpx.AsyncClient(base_url=plane.base_url) as http:
        headers = {"Authorization": f"Bearer {TOKEN}", "Host": "rebind.example"}
        assert (await http.get("/api/jobs", headers=headers)).status_code == 401


async def test_rest_follows_the_same_rules(plane: Any, jobs: Any) -> None:
    alice, carol = jobs["alice"].job_id, jobs["carol"].job_id
    viewer = {"Authorization": f"Bearer {signed('bob', 'viewer', see=('alice',))}"}
    operator = {"Authorization": f"Bearer {signed('carol', 'operator')}"}
    async with httpx.AsyncClient(base_url=plane.base_url, timeout=30) as http:
        assert (await http.get("/api/jobs")).status_code == 401
        listed = (await http.get("/api/jobs", headers=viewer)).json()
        assert {j["owner"] for j in listed} == {"alice"}
        assert (await http.get(f"/api/jobs/{alice}", headers=viewer)).status_code == 200
        assert (await http.get(f"/api/jobs/{carol}", headers=viewer)).status_code == 403
        assert (await http.get("/api/jobs/nope", headers=viewer)).status_code == 404
        assert (await http.post(f"/api/jobs/{alice}/pause", headers=viewer)).status_code == 403
        assert (await http.post(f"/api/jobs/{alice}/pause", headers=operator)).status_code == 403
        ok = await http.post(f"/api/jobs/{carol}/pause", headers=operator)
        assert ok.status_code == 200 and ok.json()["status"]["job_id"] == carol
        await http.post(f"/api/jobs/{carol}/resume", headers=operator)
        me = (await http.get("/api/token", headers=viewer)).json()
        assert me["sub"] == "bob" and me["role"] == "viewer"
        spec = (await http.get("/openapi.json")).json()
        assert "/api/jobs/{job_id}/{command}" in spec["paths"]


async def test_no_token_is_in_rays_logs_or_serves_stored_state(plane: Any, jobs: Any) -> None:
    """After the tests above (refusals, commands, refreshes, REST), neither the shared token
    nor the signing key is in any file of the Ray session's logs or in Serve's records in
    Ray's KV (where a deployment's init args are kept)."""
    from pathlib import Path

    import ray
    from ray.experimental import internal_kv

    secrets = [TOKEN.encode(), CREDENTIALS.key, CREDENTIALS.key.hex().encode()]
    session_dir = Path(ray._private.worker._global_node.get_session_dir_path())
    checked = 0
    for path in (session_dir / "logs").rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            checked += 1
            assert not any(s in data for s in secrets), path
    assert checked > 10
    keys = internal_kv._internal_kv_list(b"", namespace="serve")
    values = [internal_kv._internal_kv_get(key, namespace="serve") or b"" for key in keys]
    # The gateway's init args are in there (so the search looks where a token would be).
    assert any(b"allowed_hosts" in value for value in values)
    for key, value in zip(keys, values, strict=True):
        assert not any(s in value for s in secrets), key


async def test_the_python_client_raises_forbidden_and_refreshes_its_token(
    plane: Any, jobs: Any
) -> None:
    from control_plane.client import ControlPlaneClient, Forbidden

    async with ControlPlaneClient(plane.ws_url, signed("bob", "viewer", ttl=3)) as client:
        with pytest.raises(Forbidden):
            await client.pause(jobs["alice"].job_id)
        me = await client.refresh_token(signed("bob", "viewer", ttl=600))
        assert me["sub"] == "bob"
        await asyncio.sleep(4)  # past the first token's end
        assert await client.ping() > 0
