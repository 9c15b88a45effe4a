"""Jobs that outlive their controller, their actor and their node, on a real several-node
Ray (``ray.cluster_utils.Cluster``), end to end::

    python -m tests.integration.durability_scenario

A head node (1 CPU; the hub, the controller and the gateway) and worker nodes (1 CPU and a
``worker_node`` resource each); workers are added and removed as the checks go. Each check
prints ``CHECK <name> OK`` when it passes (``tests/integration/test_durability.py`` reads
them), and the figures it measured as ``FIGURE <name> <value>``:

1. ``controller_restart``: the controller's process SIGKILLed while jobs run, one paused and
   one about to finish: after Ray restarts it, ``list_jobs`` shows every job in its state,
   the running job pauses and resumes, finished results are still returned, and the job
   that finished while the controller was down has its result too;
2. ``node_loss_restart``: the worker node under a saving job removed: ``job.restarted`` on
   the socket, and the job completes on another node from its last save with the right sum;
3. ``node_loss_no_restarts``: the same with ``max_restarts=0``: ``job.failed`` naming the
   lost node, within the wait's bound;
4. ``not_suspendable``: a job that never saved cannot be suspended (Python and socket);
5. ``suspend_resume``: a saving job suspended: its CPU comes back to Ray while it waits;
   its node removed, ``resume`` runs it on another node from its save, to the right sum.

Everything runs within ``TIMEOUT`` seconds; whatever was started is stopped in ``finally``.
The cluster keeps its files under a temporary ``RAY_TMPDIR`` of its own, so it leaves any
other Ray on the machine alone (the integration tests' session Ray included).
"""

from __future__ import annotations

import asyncio
import faulthandler
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from typing import Any

from tests.integration.multinode_scenario import _actor_node, free_port, step, tear_down

TIMEOUT = 480  # seconds for the whole scenario, cleanup excluded
CLEANUP_GRACE = 45
STORE = 80 * 1024 * 1024  # object store per node
TOKEN = "durability-" + os.urandom(6).hex()
NOTICE_BOUND = 60.0  # seconds the checks wait for a lost node's job to be noticed


class ScenarioTimeout(Exception):
    pass


def _on_alarm(signum: int, frame: Any) -> None:
    raise ScenarioTimeout(f"the scenario did not finish within {TIMEOUT} s")


def check_ok(name: str) -> None:
    print(f"CHECK {name} OK", flush=True)


def figure(name: str, value: float, unit: str) -> None:
    print(f"FIGURE {name} {value:.2f} {unit}", flush=True)


def add_worker(cluster: Any) -> Any:
    worker = cluster.add_node(num_cpus=1, resources={"worker_node": 1}, object_store_memory=STORE)
    cluster.wait_for_nodes()
    step(f"worker node {worker.node_id[:8]} up")
    return worker


def on_worker(**more: Any) -> dict[str, Any]:
    from jobs.actor import JobOptions

    return {"job_options": JobOptions(num_cpus=1, resources={"worker_node": 1}, **more)}


async def in_thread(fn: Any, *args: Any) -> Any:
    return await asyncio.to_thread(fn, *args)


async def wait_until(what: str, predicate: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not await in_thread(predicate):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.1)


def result_of(job: Any, timeout: float = 120.0) -> Any:
    import ray

    return ray.get(job.result, timeout=timeout)


def pid_of(actor: Any) -> int:
    import ray

    pid: int = ray.get(actor.__ray_call__.remote(lambda self: os.getpid()), timeout=30)
    return pid


def node_of(job_id: str, removed: set[str] | None = None) -> str:
    """The node of the job's current actor (found again by its name)."""
    import control_plane

    deadline = time.monotonic() + 60
    while True:
        actor = control_plane.get_job(job_id)._actor
        if actor is not None:
            node = _actor_node(actor, f"job {job_id}")
            if not removed or node not in removed:
                return node
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} has no live actor")
        time.sleep(0.2)


SUM = {n: n * (n - 1) // 2 for n in (60, 80, 200)}


# --- 1. the controller killed ------------------------------------------------------------------


async def check_controller_restart() -> None:
    import ray

    import control_plane
    from control_plane.actors import runtime
    from control_plane.core.errors import JobFailedError

    # Held at its first checkpoint, to finish while the controller is down.
    finisher = control_plane.submit("jobs.examples:countdown", steps=3, delay=0.3)
    assert (await in_thread(finisher.pause)).state in ("pausing", "paused")
    done = control_plane.submit("jobs.examples:countdown", steps=3, delay=0.01)
    assert await in_thread(result_of, done) == {"steps": 3}
    failed = control_plane.submit("jobs.examples:fail", after=1, delay=0.01)
    try:
        await in_thread(result_of, failed)
        raise AssertionError("the failing job returned")
    except JobFailedError as e:
        failed_error = e.error
    running = control_plane.submit("jobs.examples:resumable_sum", steps=200, delay=0.05)
    held = control_plane.submit("jobs.examples:countdown", steps=10_000, delay=0.05)
    await wait_until("the jobs to run", lambda: running.status().progress > 0)
    await wait_until("the held job to run", lambda: held.status().progress > 0)
    assert (await in_thread(held.pause)).state == "paused"
    await wait_until("the finisher held", lambda: finisher.status().state == "paused")

    controller = runtime.controller()
    old_pid = await in_thread(pid_of, controller)
    os.kill(old_pid, signal.SIGKILL)
    killed = time.monotonic()
    step(f"controller process {old_pid} SIGKILLed")
    # Resumed through its own actor while no controller runs: it finishes meanwhile, and
    # hands its result over to the controller Ray brings back.
    ray.get(finisher.actor.resume.remote(), timeout=30)

    statuses = {s.job_id: s for s in await in_thread(control_plane.list_jobs)}
    figure("controller_restart_list_jobs_s", time.monotonic() - killed, "s")
    new_pid = await in_thread(pid_of, runtime.controller())
    assert new_pid != old_pid, "the controller was not restarted"
    expected = {
        done.job_id: "completed",
        failed.job_id: "failed",
        held.job_id: "paused",
        running.job_id: "running",
    }
    got = {job_id: statuses[job_id].state.value for job_id in expected}
    assert got == expected, f"states after the restart: {got}, expected {expected}"
    assert statuses[failed.job_id].error, statuses[failed.job_id]
    step(f"list_jobs after the restart: {got}")

    assert await in_thread(result_of, done) == {"steps": 3}
    try:
        await in_thread(result_of, failed)
        raise AssertionError("the failed job's result returned after the restart")
    except JobFailedError as e:
        assert e.error == failed_error and e.job_id == failed.job_id, e
    assert await in_thread(result_of, finisher) == {"steps": 3}
    assert (await in_thread(finisher.status)).state == "completed"
    step("results of jobs finished before and during the restart are returned")

    assert (await in_thread(running.pause)).state == "paused"
    at = (await in_thread(running.status)).progress
    await asyncio.sleep(0.5)
    assert (await in_thread(running.status)).progress == at, "it moved while paused"
    assert (await in_thread(running.resume)).state == "running"
    assert (await in_thread(held.resume)).state == "running"
    assert (await in_thread(held.cancel)).state == "cancelled"
    value = await in_thread(result_of, running)
    assert value["total"] == SUM[200] and value["runs"] == 1, value
    step("the running jobs paused, resumed and completed after the restart")
    check_ok("controller_restart")


async def check_deaths_around_a_controller_restart(sock: Any) -> None:
    """A job actor SIGKILLed while the controller is down, and one after Ray restarted it
    (the run's ObjectRef died with the old controller): neither is left running."""
    import control_plane
    from control_plane.actors import runtime

    down = control_plane.submit("jobs.examples:resumable_sum", steps=60, delay=0.05)
    after = control_plane.submit("jobs.examples:resumable_sum", steps=60, delay=0.05)
    for job in (down, after):
        await sock.subscribe(f"job:{job.job_id}")
    await wait_until(
        "both to save", lambda: min(down.status().progress, after.status().progress) >= 10
    )
    down_pid, after_pid = await in_thread(lambda: (pid_of(down.actor), pid_of(after.actor)))
    os.kill(await in_thread(pid_of, runtime.controller()), signal.SIGKILL)
    os.kill(down_pid, signal.SIGKILL)
    killed = time.monotonic()
    # No call of ours wakes the controller: it starts itself when Ray restarts it.
    restarted = await sock.wait_type("job.restarted", down.job_id, timeout=NOTICE_BOUND)
    figure("actor_death_while_controller_down_to_job_restarted_s", time.monotonic() - killed, "s")
    assert (
        "controller was down" in restarted["data"]["reason"]
        or "died" in restarted["data"]["reason"]
    ), restarted
    await in_thread(control_plane.list_jobs)  # the controller is back
    os.kill(after_pid, signal.SIGKILL)
    killed = time.monotonic()
    restarted = await sock.wait_type("job.restarted", after.job_id, timeout=NOTICE_BOUND)
    figure(
        "actor_death_after_controller_restart_to_job_restarted_s", time.monotonic() - killed, "s"
    )
    for job in (down, after):
        value = await in_thread(result_of, job)
        assert value["total"] == SUM[60] and value["runs"] == 2, value
        assert value["resumed_from"] >= 6, value
    step(f"both restarted from their saves and completed: {restarted['data']['reason']!r}")
    check_ok("deaths_around_a_controller_restart")


# --- 2 and 3. a worker node lost ---------------------------------------------------------------


async def check_node_loss_restart(cluster: Any, workers: dict[str, Any], sock: Any) -> None:
    import control_plane

    job = control_plane.submit("jobs.examples:resumable_sum", steps=80, delay=0.1, **on_worker())
    await sock.subscribe(f"job:{job.job_id}")
    first = await in_thread(node_of, job.job_id)
    await wait_until("a quarter of the job", lambda: job.status().progress >= 25)
    cluster.remove_node(workers.pop(first))
    removed = time.monotonic()
    step(f"worker node {first[:8]} removed under job {job.job_id}")
    restarted = await sock.wait_type("job.restarted", job.job_id, timeout=NOTICE_BOUND)
    figure("node_loss_to_job_restarted_s", time.monotonic() - removed, "s")
    assert restarted["data"]["attempt"] == 1, restarted
    assert restarted["data"]["status"] == "pending", restarted
    step(f"job.restarted: {restarted['data']['reason']!r}")
    second = await in_thread(node_of, job.job_id, {first})
    assert second != first
    value = await in_thread(result_of, job)
    assert value["total"] == SUM[80], f"wrong sum after the restart: {value}"
    assert value["runs"] == 2 and value["resumed_from"] >= 20, value
    assert (await in_thread(job.status)).state == "completed"
    step(f"completed on node {second[:8]} from step {value['resumed_from']}: {value}")
    check_ok("node_loss_restart")


async def check_node_loss_no_restarts(cluster: Any, workers: dict[str, Any], sock: Any) -> None:
    import control_plane
    from control_plane.core.errors import JobFailedError

    job = control_plane.submit(
        "jobs.examples:countdown", steps=100_000, delay=0.05, **on_worker(max_restarts=0)
    )
    await sock.subscribe(f"job:{job.job_id}")
    node = await in_thread(node_of, job.job_id)
    await sock.wait_type("job.progress", job.job_id)
    cluster.remove_node(workers.pop(node))
    removed = time.monotonic()
    failed = await sock.wait_type("job.failed", job.job_id, timeout=NOTICE_BOUND)
    figure("node_loss_to_job_failed_s", time.monotonic() - removed, "s")
    error = failed["data"]["error"]
    assert node in error, f"job.failed does not name the lost node {node}: {error!r}"
    try:
        await in_thread(result_of, job)
        raise AssertionError("a lost job returned a result")
    except JobFailedError as e:
        assert node in e.error, e.error
    assert (await in_thread(job.status)).state == "failed"
    assert "job.restarted" not in [e["type"] for e in sock.events(job.job_id)]
    step(f"job.failed: {error!r}")
    check_ok("node_loss_no_restarts")


# --- 4 and 5. suspend ------------------------------------------------------------------------


async def check_not_suspendable(sock: Any) -> None:
    import control_plane
    from control_plane.core.errors import NotSuspendableError

    job = control_plane.submit("jobs.examples:countdown", steps=10_000, delay=0.05)
    await wait_until("the job to run", lambda: job.status().progress > 0)
    try:
        await in_thread(job.suspend)
        raise AssertionError("a job that never saved was suspended")
    except NotSuspendableError as e:
        assert "ctx.save" in e.message, e.message
    reply = await sock.request({"type": "job.suspend", "job_id": job.job_id})
    assert reply["type"] == "error" and reply["data"]["code"] == "not_suspendable", reply
    assert (await in_thread(job.status)).state == "running"
    await in_thread(job.cancel)
    check_ok("not_suspendable")


def free_cpus() -> float:
    import ray

    return float(ray.available_resources().get("CPU", 0.0))


async def check_suspend_resume(cluster: Any, workers: dict[str, Any], sock: Any) -> None:
    import control_plane
    from control_plane.actors import runtime

    idle = await in_thread(free_cpus)
    job = control_plane.submit("jobs.examples:resumable_sum", steps=60, delay=0.1, **on_worker())
    await sock.subscribe(f"job:{job.job_id}")
    first = await in_thread(node_of, job.job_id)
    await wait_until("a third of the job", lambda: job.status().progress >= 33)
    await wait_until("its CPU taken", lambda: free_cpus() == idle - 1)
    reply = await sock.request({"type": "job.suspend", "job_id": job.job_id})
    assert reply["type"] == "ack", reply
    suspended = await sock.wait_type("job.suspended", job.job_id)
    at = suspended["data"]["progress"]
    await wait_until("its CPU given back", lambda: free_cpus() == idle)
    assert (await in_thread(job.status)).state == "suspended"
    assert runtime.get_actor(runtime.job_actor_name(job.job_id)) is None, "its actor lives"
    step(f"suspended at {at:.0f}%; free CPUs {idle - 1:g} while it ran, {idle:g} now")
    second_worker = add_worker(cluster)
    workers[second_worker.node_id] = second_worker
    cluster.remove_node(workers.pop(first))
    await wait_until("the node gone", lambda: free_cpus() == idle)  # one worker for another
    status = await in_thread(job.status)
    assert status.state == "suspended" and status.progress == at, status
    step(f"node {first[:8]} removed; the suspended job did not move")
    resumed = await in_thread(job.resume)
    assert resumed.state in ("pending", "running"), resumed
    second = await in_thread(node_of, job.job_id, {first})
    assert second != first
    value = await in_thread(result_of, job)
    assert value["total"] == SUM[60], f"wrong sum after the resume: {value}"
    assert value["runs"] == 2 and value["resumed_from"] == round(at * 60 / 100), (value, at)
    types = [e["type"] for e in sock.events(job.job_id)]
    between = types[types.index("job.suspended") : types.index("job.resumed")]
    assert "job.progress" not in between, types
    step(f"resumed on node {second[:8]} from step {value['resumed_from']}: {value}")
    check_ok("suspend_resume")


# --- setup and teardown ------------------------------------------------------------------------


async def run_checks(cluster: Any, workers: dict[str, Any], info: Any) -> None:
    from tests.integration.wsclient import TestSocket

    sock = await TestSocket.open(info.ws_url, TOKEN)
    try:
        await sock.wait_type("welcome")
        await check_controller_restart()
        await check_deaths_around_a_controller_restart(sock)
        await check_node_loss_restart(cluster, workers, sock)
        workers.update({w.node_id: w for w in [add_worker(cluster)]})
        await check_node_loss_no_restarts(cluster, workers, sock)
        await check_not_suspendable(sock)
        await check_suspend_resume(cluster, workers, sock)
    finally:
        await sock.close()


def main() -> int:
    logging.basicConfig(level=logging.WARNING)
    own_tmp = tempfile.mkdtemp(prefix="cpdu-", dir="/tmp")
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
        workers = {w.node_id: w for w in (add_worker(cluster), add_worker(cluster))}
        ray.init(address=cluster.address, logging_level=logging.WARNING)
        started = True
        info = control_plane.start(
            host="127.0.0.1",
            port=free_port(),
            token=TOKEN,
            system=SystemConfig(metrics_interval=1.0),
            state_dir=os.path.join(own_tmp, "state"),
        )
        step(f"control plane up at {info.base_url} ({time.monotonic() - began:.1f} s)")
        asyncio.run(run_checks(cluster, workers, info))
    except BaseException as e:
        failure = f"{type(e).__name__}: {e}"
        traceback.print_exc()
    finally:
        signal.alarm(0)
        tear_down(started, cluster)
        faulthandler.cancel_dump_traceback_later()
        shutil.rmtree(own_tmp, ignore_errors=True)
    took = time.monotonic() - began
    if failure is not None:
        print(f"DURABILITY SCENARIO FAILED after {took:.1f} s: {failure}", flush=True)
        return 1
    print(f"DURABILITY SCENARIO PASSED in {took:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
