"""Two gateway replicas on a three-node cluster, behind the shipped ``deploy/nginx.conf``.

A driver connects to one Ray at a time and the integration tests share one session Ray, so
this runs in its own process (``tests/integration/test_cluster_deploy.py`` starts it)::

    python -m tests.integration.nginx_scenario

With ``ray.cluster_utils.Cluster`` (a head and two workers, one CPU each, all on 127.0.0.1)
it checks:

1. ``control_plane.start(num_replicas=2, port_span=2)``: two replicas on two nodes, each on
   its own port of the span (the nodes share one address); three 1-CPU jobs run on three
   different nodes;
2. nginx (Debian's, started here on loopback with the shipped config, its upstream pointed at
   the two replicas) passes 50 raw clients through; each reads a job's events exactly once,
   in order;
3. one replica is killed mid-job: its clients see their connection end, reconnect through
   nginx (to the other replica, while Serve replaces the dead one) with ``since`` = the last
   seq they read, and in the end every client has every event of the job exactly once,
   counted on the wire across its connections.

Everything runs within ``TIMEOUT`` seconds; whatever was started is stopped in ``finally``.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

from tests.integration.multinode_scenario import _actors, _alive_node_of, free_port, step

TIMEOUT = 300
CLIENTS = 50
STEPS = 400  # the job's progress events
ROOT = Path(__file__).resolve().parents[2]
TOKEN = "nginx-" + os.urandom(6).hex()
REPLICA_CLASS = "ServeReplica:control_plane:gateway"


class ScenarioTimeout(Exception):
    pass


def _on_alarm(signum: int, frame: types.FrameType | None) -> None:
    raise ScenarioTimeout(f"the scenario did not finish within {TIMEOUT} s")


def nginx_config(tmp: Path, listen: int, upstreams: list[int]) -> Path:
    """The shipped config, with this run's listen port and replicas (nothing else changed)."""
    text = (ROOT / "deploy" / "nginx.conf").read_text()
    servers = "".join(
        f"        server 127.0.0.1:{port} max_fails=1 fail_timeout=5s;\n" for port in upstreams
    )
    text, n = re.subn(r"(?m)^        server 127\.0\.0\.1:\d+ [^\n]*\n", "", text)
    assert n >= 1, "deploy/nginx.conf has no upstream server lines"
    text = text.replace("upstream control_plane {\n", "upstream control_plane {\n" + servers)
    text, n = re.subn(r"listen 127\.0\.0\.1:\d+;", f"listen 127.0.0.1:{listen};", text)
    assert n == 1, "deploy/nginx.conf has no loopback listen line"
    path = tmp / "nginx.conf"
    path.write_text(text)
    return path


def start_nginx(tmp: Path, config: Path) -> subprocess.Popen[bytes]:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    directives = f"daemon off; pid {tmp}/nginx.pid;"
    if os.geteuid() == 0:
        directives += " user root;"  # its temp files live in this run's directory
    proc = subprocess.Popen([nginx, "-p", str(tmp), "-c", str(config), "-g", directives])
    return proc


def _replica_nodes() -> list[str]:
    return sorted(
        a["Address"]["NodeID"]
        for a in _actors()
        if a["ActorClassName"] == REPLICA_CLASS and a["State"] == "ALIVE"
    )


def _wait_port(port: int, timeout: float = 30.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port}")


async def run(tmp: Path) -> None:
    import ray
    from ray.cluster_utils import Cluster

    import control_plane
    from control_plane.actors import runtime
    from control_plane.gateway.manager import SocketConfig
    from jobs.actor import JobOptions
    from tests.integration.rawclient import RawClient

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    for _ in range(2):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, include_dashboard=False)
    nginx: subprocess.Popen[bytes] | None = None
    clients: list[RawClient] = []
    try:
        port = free_port()
        while True:  # two ports in a row, free now
            try:
                import socket

                with socket.socket() as s:
                    s.bind(("127.0.0.1", port + 1))
                break
            except OSError:
                port = free_port()
        info = control_plane.start(
            port=port,
            port_span=2,
            num_replicas=2,
            token=TOKEN,
            socket=SocketConfig(heartbeat_interval=1.0, heartbeat_timeout=8.0, max_lag=5.0),
        )
        _wait_port(port + 1)
        nodes = await asyncio.to_thread(_replica_nodes)
        assert len(nodes) == 2 and len(set(nodes)) == 2, f"two replicas on two nodes: {nodes}"
        step(f"two gateway replicas on ports {port} and {port + 1}, on two nodes")

        # Jobs spread: three 1-CPU jobs on three 1-CPU nodes.
        spread = [
            control_plane.submit(
                "jobs.examples:countdown",
                steps=100,
                delay=0.02,
                job_options=JobOptions(num_cpus=1),
            )
            for _ in range(3)
        ]
        where = [
            await asyncio.to_thread(
                _alive_node_of,
                lambda a, j=job: a["Name"] == runtime.job_actor_name(j.job_id),
                f"job {job.job_id}",
            )
            for job in spread
        ]
        assert len(set(where)) == 3, f"three 1-CPU jobs on three nodes: {where}"
        for job in spread:
            await asyncio.to_thread(ray.get, job.result, timeout=120)
        step("three jobs ran on three different nodes")

        listen = free_port()
        config = nginx_config(tmp, listen, [port, port + 1])
        nginx = start_nginx(tmp, config)
        _wait_port(listen)
        url = f"ws://127.0.0.1:{listen}/ws"
        step(f"nginx on 127.0.0.1:{listen} in front of both replicas")

        job = control_plane.submit(
            "jobs.examples:countdown", steps=STEPS, delay=0.04, job_options=JobOptions()
        )
        await asyncio.to_thread(job.pause)  # held until every client has subscribed
        channel = f"job:{job.job_id}"
        clients = [RawClient(url, TOKEN) for _ in range(CLIENTS)]
        await asyncio.gather(*(c.connect() for c in clients))
        requests = [await c.subscribe([channel], since=0) for c in clients]
        for c, r in zip(clients, requests, strict=True):
            ack = await c.acked(r)
            assert ack["data"]["recovered"] is True, ack
        await asyncio.to_thread(job.resume)
        step(f"{CLIENTS} raw clients subscribed through nginx; the job runs")

        # Kill one replica mid-job; the clients it served resume through nginx.
        await asyncio.sleep(STEPS * 0.04 / 3)
        replicas = [
            a for a in _actors() if a["ActorClassName"] == REPLICA_CLASS and a["State"] == "ALIVE"
        ]
        victim = replicas[0]
        os.kill(victim["Pid"], signal.SIGKILL)
        step(f"killed the replica on node {victim['Address']['NodeID'][:8]} (pid {victim['Pid']})")
        dropped: set[int] = set()

        async def resume_dropped() -> None:
            for i, c in enumerate(clients):
                if not c.open:
                    dropped.add(i)
                    await c.resume([channel])

        deadline = time.monotonic() + 120
        while not (await asyncio.to_thread(job.status)).state.terminal:
            await resume_dropped()
            assert time.monotonic() < deadline, "the job did not end in time"
            await asyncio.sleep(0.1)
        reply = await asyncio.to_thread(
            lambda: ray.get(runtime.hub().replay.remote(0, [channel]), timeout=30)
        )
        expected = [e.seq for e in reply["entries"]]
        assert len(expected) >= STEPS, f"the hub has {len(expected)} events of the job"
        last = expected[-1]
        while not all(c.last_seq >= last for c in clients):
            await resume_dropped()
            assert time.monotonic() < deadline, "the clients did not read the job's end in time"
            await asyncio.sleep(0.1)
        assert dropped, "no client lost its replica: the kill reached none of them"
        step(f"{len(dropped)} clients lost their replica and resumed through nginx")
        bad = []
        for i, c in enumerate(clients):
            audit = c.audit(expected, [channel])
            if not audit.ok:
                bad.append(f"client {i}: {audit}")
        assert not bad, "\n".join(bad[:5])
        total = sum(len(c.seqs([channel])) for c in clients)
        step(
            f"every client read all {len(expected)} events of the job exactly once, in order "
            f"({total} frames; {len(dropped)} clients over two connections)"
        )
        del info
    finally:
        for c in clients:
            await c.close(2)
        if nginx is not None:
            nginx.terminate()
            nginx.wait(10)
        control_plane.stop()
        ray.shutdown()
        cluster.shutdown()


def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="cp-nginx-", dir="/tmp"))
    os.environ["RAY_TMPDIR"] = str(tmp)  # this cluster's files and record, nobody else's
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(TIMEOUT)
    try:
        asyncio.run(run(tmp))
    finally:
        signal.alarm(0)
        shutil.rmtree(tmp, ignore_errors=True)
    print("NGINX SCENARIO PASSED", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
