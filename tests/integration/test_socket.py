"""The socket protocol against the real gateway: bad input, auth, origin, broadcast."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

import control_plane
from control_plane.gateway.manager import WebSocketManager, get_ws_manager
from tests.conftest import TOKEN
from tests.integration.wsclient import TestSocket

pytestmark = pytest.mark.ray

BAD_FRAMES = [
    ("{not json", "invalid_json", "JSON"),
    ("[1, 2]", "invalid_message", "object"),
    ('{"channels": ["jobs"]}', "missing_type", "type"),
    ('{"type": "job.explode", "job_id": "x"}', "unknown_type", "job.explode"),
    ('{"type": "subscribe"}', "invalid_message", "channels"),
    ('{"type": "subscribe", "channels": ["jobs"], "colour": "red"}', "invalid_message", "colour"),
    ('{"type": "subscribe", "channels": ["nowhere"]}', "invalid_message", "nowhere"),
    ('{"type": "subscribe", "channels": "jobs"}', "invalid_message", "channels"),
    ('{"type": "subscribe", "channels": ["jobs"], "since": -4}', "invalid_message", "since"),
    ('{"type": "job.pause"}', "invalid_message", "job_id"),
    ('{"type": "job.cancel", "job_id": 12}', "invalid_message", "job_id"),
]


async def test_each_bad_frame_gets_an_error_naming_it_and_the_socket_carries_on(
    plane: Any,
) -> None:
    bad = await TestSocket.open(plane.ws_url, TOKEN)
    bystander = await TestSocket.open(plane.ws_url, TOKEN)
    await bystander.subscribe("jobs")
    job = control_plane.submit("jobs.examples:countdown", steps=3, delay=0.05)
    for frame, code, named in BAD_FRAMES:
        count = len(bad.frames)
        await bad.send(frame)
        reply = await bad.wait_for(
            lambda f, n=count: f["type"] == "error" and bad.frames.index(f) >= n
        )
        assert reply["data"]["code"] == code, (frame, reply)
        assert named.lower() in reply["data"]["message"].lower(), (frame, reply)
    reply = await bad.request({"type": "subscribe", "channels": ["nowhere"]})
    assert reply["type"] == "error" and reply["data"]["request_id"].startswith("r")
    await bad.send({"type": "ping", "id": "still-alive"})
    pong = await bad.wait_type("pong")
    assert pong["data"]["request_id"] == "still-alive"
    # the bystander saw the job through while the bad client was being refused
    await bystander.wait_type("job.completed", job.job_id)
    # and a valid subscribe on the bad socket works afterwards
    ack = await bad.subscribe(f"job:{job.job_id}", since=0)
    assert ack["type"] == "ack" and ack["data"]["replayed"] >= 5
    await bad.close()
    await bystander.close()


async def test_a_frame_over_the_limit_closes_with_1009_and_others_carry_on(plane: Any) -> None:
    big = await TestSocket.open(plane.ws_url, TOKEN, max_size=None)
    other = await TestSocket.open(plane.ws_url, TOKEN)
    await big.send(json.dumps({"type": "ping", "pad": "x" * (70 * 1024)}))
    code, _ = await asyncio.wait_for(big.closed, 10)
    assert code == 1009
    await other.send({"type": "ping", "id": 7})
    assert (await other.wait_type("pong"))["data"]["request_id"] == 7
    await other.close()


async def test_a_socket_without_the_token_is_refused_with_4401(plane: Any) -> None:
    sock = await TestSocket.open(plane.ws_url, None)
    code, _ = await asyncio.wait_for(sock.closed, 10)
    assert code == 4401
    assert sock.frames[0]["data"]["code"] == "unauthorized"
    wrong = await TestSocket.open(plane.ws_url, "wrong-token")
    assert (await asyncio.wait_for(wrong.closed, 10))[0] == 4401


@pytest.mark.parametrize("origin", ["http://evil.example", "null"])
async def test_a_foreign_origin_is_refused_with_4403(plane: Any, origin: str) -> None:
    sock = await TestSocket.open(plane.ws_url, TOKEN, origin=origin)
    code, _ = await asyncio.wait_for(sock.closed, 10)
    assert code == 4403


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_the_page_url_sets_a_cookie_that_same_origin_sockets_use(
    plane: Any, host: str
) -> None:
    base = f"http://{host}:{plane.port}"
    async with httpx.AsyncClient(base_url=base) as http:
        assert (await http.get("/")).status_code == 401
        response = await http.get(f"/?token={TOKEN}")
        assert response.status_code == 303
        name = f"cp_session_{plane.port}"
        cookie = response.cookies[name]
        # A signed session token, not the token the URL carried, and not for ever.
        assert TOKEN not in cookie and cookie.count(".") == 2
        assert "Max-Age=43200" in response.headers["set-cookie"]
        page = await http.get("/", headers={"Cookie": f"{name}={cookie}"})
        assert page.status_code == 200 and "/static/cp-client.js" in page.text
    sock = await TestSocket.open(
        f"ws://{host}:{plane.port}/ws",
        None,
        headers={"Cookie": f"{name}={cookie}"},
        origin=base,
    )
    await sock.send({"type": "ping", "id": "c"})
    assert (await sock.wait_type("pong"))["data"]["request_id"] == "c"
    await sock.close()


async def test_broadcast_from_the_driver_reaches_every_client_whatever_it_subscribed(
    plane: Any,
) -> None:
    quiet = await TestSocket.open(plane.ws_url, TOKEN)  # subscribed to nothing
    system = await TestSocket.open(plane.ws_url, TOKEN)
    await system.subscribe("system")
    manager = get_ws_manager()
    seq = await manager.broadcast({"type": "job.progress", "job_id": "7f3a", "progress": 75})
    for sock in (quiet, system):
        frame = await sock.wait_for(lambda f: f.get("seq") == seq)
        assert frame["type"] == "job.progress"
        assert frame["channel"] == "job:7f3a"
        assert frame["data"] == {
            "job_id": "7f3a",
            "progress": 75.0,
            "status": "running",
            "message": None,
        }
    await quiet.close()
    await system.close()


async def test_send_to_client_reaches_only_that_client(plane: Any) -> None:
    target = await TestSocket.open(plane.ws_url, TOKEN)
    other = await TestSocket.open(plane.ws_url, TOKEN)
    await other.subscribe("*")
    welcome = await target.wait_type("welcome")
    client_id = welcome["data"]["client_id"]
    seq = await WebSocketManager().send_to_client(
        client_id, {"type": "job.completed", "job_id": "abc", "result": {"ok": True}}
    )
    frame = await target.wait_for(lambda f: f.get("seq") == seq)
    assert frame["data"]["result"] == {"ok": True}
    later = await get_ws_manager().broadcast({"type": "app.marker"})
    await other.wait_for(lambda f: f.get("seq") == later)
    assert all(f.get("seq") != seq for f in other.frames)
    await target.close()
    await other.close()


async def test_healthz_answers_without_a_token(plane: Any) -> None:
    async with httpx.AsyncClient(base_url=plane.base_url) as http:
        response = await http.get("/healthz")
    assert response.status_code == 200 and response.json()["status"] == "ok"


async def test_rest_job_listing_needs_the_token(plane: Any) -> None:
    job = control_plane.submit("jobs.examples:countdown", steps=1, delay=0)
    async with httpx.AsyncClient(base_url=plane.base_url) as http:
        assert (await http.get("/api/jobs")).status_code == 401
        headers = {"Authorization": f"Bearer {TOKEN}"}
        listing = (await http.get("/api/jobs", headers=headers)).json()
        assert job.job_id in {j["job_id"] for j in listing}
        one = await http.get(f"/api/jobs/{job.job_id}", headers=headers)
        assert one.json()["job_id"] == job.job_id
        assert (await http.get("/api/jobs/nope", headers=headers)).status_code == 404


async def test_many_sockets_are_served_at_once(plane: Any) -> None:
    socks = await asyncio.gather(*(TestSocket.open(plane.ws_url, TOKEN) for _ in range(30)))
    job = control_plane.submit("jobs.examples:countdown", steps=2, delay=0.01)
    await asyncio.gather(*(s.subscribe(f"job:{job.job_id}", since=0) for s in socks))
    done = await asyncio.gather(*(s.wait_type("job.completed", job.job_id) for s in socks))
    assert len({d["seq"] for d in done}) == 1
    await asyncio.gather(*(s.close() for s in socks))
