"""The control plane on a two-node Ray cluster (``ray.cluster_utils.Cluster``), end to end.

A driver connects to one Ray at a time, and the integration tests share one session Ray, so
this runs in its own process (``tests/integration/test_multinode.py`` starts it)::

    python -m tests.integration.multinode_scenario [--worker-first]

It starts a head node (1 CPU) and the control plane on it, adds a worker node (1 CPU and a
``worker_node`` resource), and checks, with real nodes, the real Serve gateway and a real
WebSocket client:

1. the worker's arrival is announced (``system.alert`` ``node_joined``); the gateway replica,
   the hub and the controller run on the head node; ``/healthz`` answers;
2. a job asking for ``worker_node`` runs on the worker node; its socket sees ``job.started``
   and ``job.progress`` in seq order, ``job.pause`` / ``job.resume`` over the socket get
   ``job.paused`` / ``job.resumed``, and ``ray.get(job.result)`` returns the result;
3. removing the worker node under a running job: ``system.alert`` ``node_left`` on the
   ``system`` channel, ``job.failed`` on the job's channel, ``JobFailedError`` from
   ``ray.get(job.result)``, the job's status ``failed``; the gateway and the socket live on.

With ``--worker-first`` the worker node is there before ``control_plane.start()`` (as on a
cluster brought up before the control plane); the checks are the same, and check 1 then
shows that the hub and the controller are pinned to the head node (Ray would otherwise
place them on either node, and losing the worker would lose them).

Everything runs within ``TIMEOUT`` seconds; whatever was started is stopped in ``finally``; a
failed check exits non-zero with its message. The cluster keeps its files (and its
``ray_current_cluster`` record) under a temporary ``RAY_TMPDIR`` of its own, so it leaves any
other Ray on the machine alone (the integration tests' session Ray included).
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import types
import urllib.request
from pathlib import Path
from typing import Any

TIMEOUT = 240  # seconds for the whole scenario, cleanup excluded
CLEANUP_GRACE = 45  # then a hard exit, with every thread's traceback
STORE = 100 * 1024 * 1024  # object store per node
GATEWAY_REPLICA_CLASS = "ServeReplica:control_plane:gateway"
TOKEN = "multinode-" + os.urandom(6).hex()


class ScenarioTimeout(Exception):
    pass


def _on_alarm(signum: int, frame: types.FrameType | None) -> None:
    raise ScenarioTimeout(f"the scenario did not finish within {TIMEOUT} s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def step(message: str) -> None:
    print(f"[multinode {time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- where things run: the GCS actor table (no dashboard needed) ---------------------------


def _actors() -> list[dict[str, Any]]:
    from ray._private import state

    table: dict[str, dict[str, Any]] = state.actors()
    return list(table.values())


def _alive_node_of(match: Any, what: str, timeout: float = 30.0) -> str:
    """The node id of the one ALIVE actor for which ``match(info)`` is true."""
    deadline = time.monotonic() + timeout
    found: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        found = [a for a in _actors() if match(a) and a["State"] == "ALIVE"]
        if len(found) == 1 and found[0]["Address"]["NodeID"]:
            node_id: str = found[0]["Address"]["NodeID"]
            return node_id
        time.sleep(0.2)
    raise AssertionError(f"expected one ALIVE actor for {what}, found {found}")


def _actor_node(handle: Any, what: str) -> str:
    actor_id = handle._actor_id.hex()
    return _alive_node_of(lambda a: a["ActorID"] == actor_id, what)


def _named_actor_node(name: str) -> str:
    return _alive_node_of(lambda a: a["Name"] == name, f"the actor named {name!r}")


def _node_name(node_id: str, head: str, worker: str) -> str:
    return {head: "head", worker: "worker"}.get(node_id, node_id)


# --- the checks ------------------------------------------------------------------------------


async def _result(ref: Any, timeout: float) -> Any:
    async def get() -> Any:
        return await ref

    return await asyncio.wait_for(get(), timeout)


def _healthz(base_url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{base_url}/healthz", timeout=10) as response:
        assert response.status == 200, f"/healthz answered {response.status}"
        body: dict[str, Any] = json.loads(response.read())
        return body


async def check_placement_and_health(
    info: Any, sock: Any, head_id: str, worker_id: str, worker_first: bool
) -> None:
    from control_plane.actors import runtime

    if not worker_first:
        alert = await sock.wait_for(
            lambda f: f["type"] == "system.alert" and f["data"].get("rule") == "node_joined",
            timeout=30,
        )
        assert alert["data"]["node_id"] == worker_id, f"node_joined names another node: {alert}"
        assert alert["channel"] == "system", alert
        step(f"system.alert node_joined for the worker: {alert['data']['message']!r}")
    metrics = await sock.wait_for(
        lambda f: f["type"] == "system.metrics" and f["data"]["nodes_alive"] == 2, timeout=30
    )
    assert metrics["data"]["cpu_total"] == 2.0, f"two 1-CPU nodes, got {metrics['data']}"

    replica_node = await asyncio.to_thread(
        _alive_node_of,
        lambda a: a["ActorClassName"] == GATEWAY_REPLICA_CLASS,
        f"the gateway replica ({GATEWAY_REPLICA_CLASS})",
    )
    assert replica_node == head_id, (
        f"the gateway replica runs on the {_node_name(replica_node, head_id, worker_id)} "
        f"node ({replica_node}), not on the head node ({head_id})"
    )
    for name in (runtime.HUB_NAME, runtime.CONTROLLER_NAME):
        node = await asyncio.to_thread(_named_actor_node, name)
        assert node == head_id, (
            f"{name} runs on the {_node_name(node, head_id, worker_id)} node ({node}), not on "
            "the head node: it is not pinned, and losing that node loses its state"
        )
    body = await asyncio.to_thread(_healthz, info.base_url)
    assert body["status"] == "ok", f"/healthz: {body}"
    step(f"gateway replica, hub and controller on the head node; /healthz {body}")


async def check_job_on_worker(sock: Any, worker_id: str, head_id: str) -> None:
    import control_plane
    from jobs.actor import JobOptions

    steps = 60
    job = control_plane.submit(
        "jobs.examples:countdown",
        steps=steps,
        delay=0.05,
        job_options=JobOptions(resources={"worker_node": 1}),
    )
    ack = await sock.subscribe(f"job:{job.job_id}", since=0)
    assert ack["type"] == "ack" and ack["data"]["recovered"] is True, ack
    node = await asyncio.to_thread(_actor_node, job.actor, f"job {job.job_id}")
    assert node == worker_id, (
        f"job {job.job_id} asked for worker_node but runs on the "
        f"{_node_name(node, head_id, worker_id)} node ({node})"
    )
    step(f"job {job.job_id} runs on the worker node")

    await sock.wait_type("job.started", job.job_id)
    await sock.wait_type("job.progress", job.job_id)
    reply = await sock.request({"type": "job.pause", "job_id": job.job_id})
    assert reply["type"] == "ack", f"job.pause: {reply}"
    assert reply["data"]["status"]["state"] == "paused", f"job.pause: {reply}"
    paused = await sock.wait_type("job.paused", job.job_id)
    held = job.status().progress
    await asyncio.sleep(0.5)
    assert job.status().progress == held, "the job moved while paused"
    reply = await sock.request({"type": "job.resume", "job_id": job.job_id})
    assert reply["type"] == "ack", f"job.resume: {reply}"
    assert reply["data"]["status"]["state"] == "running", f"job.resume: {reply}"
    resumed = await sock.wait_type("job.resumed", job.job_id)
    assert resumed["seq"] > paused["seq"], (paused, resumed)
    step(f"paused at {held:.1f}% and resumed over the socket")

    completed = await sock.wait_type("job.completed", job.job_id, timeout=60)
    assert await _result(job.result, 60) == {"steps": steps}
    events = sock.events(job.job_id)
    types_ = [e["type"] for e in events]
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), f"seqs out of order: {seqs}"
    assert types_[:2] == ["job.created", "job.started"], types_
    assert types_.count("job.progress") == steps, types_
    assert types_[-1] == "job.completed", types_
    between = types_[types_.index("job.paused") : types_.index("job.resumed")]
    assert "job.progress" not in between, f"progress while paused: {types_}"
    assert all(e["channel"] == f"job:{job.job_id}" for e in events), events
    assert completed["data"]["result"] == {"steps": steps}, completed
    assert job.status().state == "completed"
    step(f"job {job.job_id} completed: {len(events)} events in seq order, result returned")


async def check_worker_loss(cluster: Any, worker: Any, info: Any, sock: Any) -> None:
    import control_plane
    from control_plane.core.errors import JobFailedError
    from jobs.actor import JobOptions

    worker_id: str = worker.node_id
    job = control_plane.submit(
        "jobs.examples:countdown",
        steps=100_000,
        delay=0.05,
        # No restart: no other node has a worker_node for it (durability_scenario restarts).
        job_options=JobOptions(resources={"worker_node": 1}, max_restarts=0),
    )
    await sock.subscribe(f"job:{job.job_id}")
    node = await asyncio.to_thread(_actor_node, job.actor, f"job {job.job_id}")
    assert node == worker_id, f"job {job.job_id} runs on {node}, not on the worker node"
    await sock.wait_type("job.progress", job.job_id)
    step(f"job {job.job_id} running on the worker node; removing the worker node")

    started = time.monotonic()
    cluster.remove_node(worker)  # on the main thread, as add_node
    step(f"worker node removed in {time.monotonic() - started:.1f} s")

    alert = await sock.wait_for(
        lambda f: (
            f["type"] == "system.alert"
            and f["data"].get("rule") == "node_left"
            and f["data"].get("node_id") == worker_id
        ),
        timeout=60,
    )
    assert alert["channel"] == "system", alert
    assert alert["data"]["level"] == "error", alert
    step(
        f"system.alert node_left after {time.monotonic() - started:.1f} s: "
        f"{alert['data']['message']!r}"
    )

    failed = await sock.wait_type("job.failed", job.job_id, timeout=60)
    assert failed["channel"] == f"job:{job.job_id}", failed
    assert failed["data"]["status"] == "failed", failed
    assert "node" in failed["data"]["error"], f"job.failed does not say a node died: {failed}"
    step(f"job.failed after {time.monotonic() - started:.1f} s: {failed['data']['error']!r}")
    try:
        value = await _result(job.result, 60)
    except JobFailedError as e:
        assert e.job_id == job.job_id, f"the error names job {e.job_id}"
        assert "died" in e.error, f"the error does not say why: {e.error!r}"
        step(f"ray.get(job.result) raised {type(e).__name__}: {e.error!r}")
    else:
        raise AssertionError(f"ray.get(job.result) returned {value!r} for a lost job")
    status = job.status()
    assert status.state == "failed", f"the lost job's status is {status.state}"
    terminal = [
        e["type"]
        for e in sock.events(job.job_id)
        if e["type"] in ("job.completed", "job.failed", "job.cancelled")
    ]
    assert terminal == ["job.failed"], f"terminal events of the lost job: {terminal}"

    metrics = await sock.wait_for(
        lambda f: f["type"] == "system.metrics" and f["data"]["nodes_alive"] == 1, timeout=30
    )
    assert metrics["data"]["cpu_total"] == 1.0, metrics
    assert not sock.closed.done(), f"the socket closed: {sock.closed.result()}"
    body = await asyncio.to_thread(_healthz, info.base_url)
    assert body["status"] == "ok", body
    step("the gateway and the socket outlived the worker node")


async def run_checks(cluster: Any, worker: Any, info: Any, worker_first: bool) -> None:
    from tests.integration.wsclient import TestSocket

    head_id: str = cluster.head_node.node_id
    sock = await TestSocket.open(info.ws_url, TOKEN)
    try:
        welcome = await sock.wait_type("welcome")
        step(f"socket connected as {welcome['data']['client_id']}")
        ack = await sock.subscribe("system")
        assert ack["type"] == "ack", ack
        if not worker_first:
            worker = add_worker(cluster)  # Ray sets signal handlers: the main thread only
        await check_placement_and_health(info, sock, head_id, worker.node_id, worker_first)
        await check_job_on_worker(sock, worker.node_id, head_id)
        await check_worker_loss(cluster, worker, info, sock)
    finally:
        await sock.close()


def add_worker(cluster: Any) -> Any:
    worker = cluster.add_node(num_cpus=1, resources={"worker_node": 1}, object_store_memory=STORE)
    cluster.wait_for_nodes()
    step(f"worker node {worker.node_id} up")
    return worker


# --- setup and teardown ------------------------------------------------------------------------


def run_in_own_process(module: str, timeout: float, *args: str) -> subprocess.CompletedProcess[str]:
    """Run a scenario module (``python -m``) from the repository root, output captured: a
    driver connects to one Ray at a time, and the tests' session has one already."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=Path(__file__).resolve().parents[2],
        timeout=timeout,
        capture_output=True,
        text=True,
    )


def tear_down(started: bool, cluster: Any) -> None:
    """Stop the control plane, Serve and Ray (if they were started), then the cluster; a step
    that fails is reported and the next one still runs."""
    import ray
    from ray import serve

    import control_plane

    steps: list[tuple[str, Any]] = []
    if started:
        steps += [
            ("control_plane.stop", control_plane.stop),
            ("serve.shutdown", serve.shutdown),
            ("ray.shutdown", ray.shutdown),
        ]
    if cluster is not None:
        steps.append(("cluster.shutdown", cluster.shutdown))
    for name, stop in steps:
        try:
            stop()
        except Exception:
            step(f"{name} failed:\n{traceback.format_exc()}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--worker-first",
        action="store_true",
        help="add the worker node before control_plane.start() instead of after",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    # The cluster's sessions, sockets and ray_current_cluster record go to a directory of
    # its own (short: Unix socket paths are limited), away from any other Ray here.
    own_tmp = tempfile.mkdtemp(prefix="cpmn-", dir="/tmp")
    os.environ["RAY_TMPDIR"] = own_tmp

    import ray
    from ray.cluster_utils import Cluster

    import control_plane
    from control_plane.core.system import SystemConfig

    began = time.monotonic()
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(TIMEOUT)
    faulthandler.dump_traceback_later(TIMEOUT + CLEANUP_GRACE, exit=True)
    cluster: Any = None
    started = False
    failure: str | None = None
    try:
        cluster = Cluster(
            initialize_head=True,
            head_node_args={
                "num_cpus": 1,
                "object_store_memory": STORE,
                "include_dashboard": False,
            },
        )
        step(f"head node {cluster.head_node.node_id} up at {cluster.address}")
        worker = add_worker(cluster) if args.worker_first else None
        ray.init(address=cluster.address, logging_level=logging.WARNING)
        started = True
        info = control_plane.start(
            host="127.0.0.1",
            port=free_port(),
            token=TOKEN,
            system=SystemConfig(metrics_interval=0.5),
        )
        step(f"control plane up at {info.base_url} ({time.monotonic() - began:.1f} s)")
        asyncio.run(run_checks(cluster, worker, info, args.worker_first))
    except BaseException as e:  # reported, then the exit code says it
        failure = f"{type(e).__name__}: {e}"
        traceback.print_exc()
    finally:
        signal.alarm(0)
        tear_down(started, cluster)
        faulthandler.cancel_dump_traceback_later()
        shutil.rmtree(own_tmp, ignore_errors=True)
    took = time.monotonic() - began
    if failure is not None:
        print(f"MULTINODE SCENARIO FAILED after {took:.1f} s: {failure}", flush=True)
        return 1
    print(f"MULTINODE SCENARIO PASSED in {took:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
