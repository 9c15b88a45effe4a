"""Who may see and steer which job, through the gateway's real manager, sessions, replay
seam and the hub's real log (no Ray, no network): a hypothesis search over sequences of
subscribes (live and with ``since``), unsubscribes, events and commands by a viewer and an
operator finds no step that lets one see or control what it may not."""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from control_plane.core.hub_log import EventLog
from control_plane.core.principals import SHARED_ADMIN, Principal, Role
from control_plane.core.protocol import JobCommand, make_event
from control_plane.gateway.manager import WebSocketManager
from control_plane.gateway.session import SocketConfig
from tests.unit.hubfake import LogHub
from tests.unit.test_session import FakeSocket

OWNERS = {"a1": "alice", "c1": "carol", "c2": "carol", "d1": "dave"}
PRINCIPALS = {
    "bob": Principal.make("bob", Role.VIEWER, see=["alice"]),  # watches alice's jobs
    "carol": Principal.make("carol", Role.OPERATOR),  # runs her own
    "admin": SHARED_ADMIN,
}
CHANNELS = ["job:a1", "job:c1", "job:c2", "job:d1", "jobs", "*", "system", "audit"]
CONFIG = SocketConfig(
    send_queue_size=64,
    max_lag=2.0,
    subscribe_deadline=30.0,
    close_timeout=0.3,
    max_frame_bytes=4096,
)

who = st.sampled_from(sorted(PRINCIPALS))
job = st.sampled_from(sorted(OWNERS))
step = st.one_of(
    st.tuples(
        st.just("emit"), job, st.sampled_from(["job.progress", "job.started", "agent.output"])
    ),
    st.tuples(st.just("audit"), st.just(""), st.just("")),
    st.tuples(st.just("system"), st.just(""), st.just("")),
    st.tuples(st.just("subscribe"), who, st.sampled_from(CHANNELS)),
    st.tuples(st.just("resume"), who, st.sampled_from(CHANNELS)),  # subscribe since=0
    st.tuples(st.just("unsubscribe"), who, st.sampled_from(CHANNELS)),
    st.tuples(st.just("command"), who, job),
)


def may_see(principal: Principal, frame: dict[str, Any]) -> bool:
    channel = frame.get("channel", "")
    if channel.startswith("job:"):
        return principal.may_see_owner(OWNERS.get(channel[4:]))
    return channel != "audit" or principal.is_admin


async def scenario(steps: list[tuple[str, str, str]]) -> dict[str, FakeSocket]:
    hub = LogHub(EventLog(capacity=10_000, epoch="e"))
    commands: list[tuple[str, str]] = []

    async def run_command(msg: JobCommand, client_id: str) -> dict[str, Any]:
        commands.append((client_id, msg.job_id))
        return {"status": {"job_id": msg.job_id}}

    async def owners(job_ids: list[str] | None) -> dict[str, str]:
        return {j: o for j, o in OWNERS.items() if job_ids is None or j in job_ids}

    manager = WebSocketManager()
    manager.configure(CONFIG, hub, commands=run_command, owners=owners)
    manager.start()
    sockets: dict[str, FakeSocket] = {}
    tasks = []
    try:
        for name, principal in PRINCIPALS.items():
            ws = FakeSocket()
            tasks.append(asyncio.ensure_future(manager.serve(ws, name, principal)))  # type: ignore[arg-type]
            await ws.wait_for(lambda f: f["type"] == "welcome")
            sockets[name] = ws
        for n, (kind, a, b) in enumerate(steps):
            if kind == "emit":
                hub.log.append([make_event(b, {"job_id": a, "status": "running"})])
            elif kind == "audit":
                event = make_event("audit.record", {"who": "x", "action": "y", "outcome": "ok"})
                event["channel"] = "audit"
                hub.log.append([event])
            elif kind == "system":
                hub.log.append([make_event("system.alert", {"level": "info", "message": "m"})])
            else:
                ws, rid = sockets[a], f"r{n}"
                msg: dict[str, Any] = {"id": rid}
                if kind in ("subscribe", "resume", "unsubscribe"):
                    msg.update(type="unsubscribe" if kind == "unsubscribe" else "subscribe")
                    msg["channels"] = [b]
                    if kind == "resume":
                        msg["since"] = 0
                else:
                    msg.update(type="job.pause", job_id=b)
                ws.say(msg)
                reply = await ws.wait_for(
                    lambda f, rid=rid: (
                        f.get("data", {}).get("request_id") == rid and f["type"] in ("ack", "error")
                    )
                )
                check_reply(PRINCIPALS[a], kind, b, reply)
        await asyncio.sleep(0.05)  # what the reader still had in hand
        await asyncio.sleep(0.05)
        for name, ws in sockets.items():
            for frame in ws.sent:
                if "seq" in frame:
                    assert may_see(PRINCIPALS[name], frame), (name, frame)
        for client_id, job_id in commands:
            assert PRINCIPALS[client_id].may_control(OWNERS[job_id]), (client_id, job_id)
        return sockets
    finally:
        await manager.close_all()
        await asyncio.gather(*tasks, return_exceptions=True)


def check_reply(principal: Principal, kind: str, target: str, reply: dict[str, Any]) -> None:
    if kind == "command":
        allowed = principal.may_control(OWNERS[target])
    elif kind == "unsubscribe":
        allowed = True
    elif target.startswith("job:"):
        allowed = principal.may_see_owner(OWNERS[target[4:]])
    else:
        allowed = target != "audit" or principal.is_admin
    if allowed:
        assert reply["type"] == "ack", (principal.sub, kind, target, reply)
    else:
        assert reply["type"] == "error" and reply["data"]["code"] == "forbidden", reply


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(steps=st.lists(step, max_size=25))
def test_no_sequence_of_steps_shows_or_steers_what_a_principal_may_not(steps):
    asyncio.run(scenario(steps))


def test_each_principal_gets_what_it_may_see_live_and_replayed():
    # Not vacuous: the same scenario delivers, to each, exactly the jobs it may see.
    steps: list[tuple[str, str, str]] = [("emit", j, "job.started") for j in sorted(OWNERS)]
    steps += [("resume", name, "*") for name in PRINCIPALS]
    steps += [("emit", j, "job.progress") for j in sorted(OWNERS)]
    steps += [("audit", "", ""), ("command", "carol", "c1"), ("command", "bob", "a1")]
    steps += [("command", "carol", "d1"), ("command", "admin", "d1")]
    sockets = asyncio.run(scenario(steps))
    seen = {
        name: sorted({f["channel"] for f in ws.sent if "seq" in f}) for name, ws in sockets.items()
    }
    assert seen["bob"] == ["job:a1"]
    assert seen["carol"] == ["job:c1", "job:c2"]
    assert seen["admin"] == ["audit", "job:a1", "job:c1", "job:c2", "job:d1"]
    # Each saw its jobs' events twice over (replayed started, then live progress), once each.
    for ws in sockets.values():
        seqs = [f["seq"] for f in ws.sent if "seq" in f]
        assert seqs == sorted(set(seqs))
