"""The control plane on a two-node cluster: ``multinode_scenario`` in its own process (a
driver connects to one Ray at a time, and this session's Ray is the tests' shared one)."""

from __future__ import annotations

import pytest

from tests.integration.multinode_scenario import run_in_own_process

pytestmark = pytest.mark.ray


@pytest.mark.timeout(360)
@pytest.mark.parametrize("order", [["--worker-first"], []], ids=["worker-first", "worker-later"])
def test_gateway_jobs_and_a_lost_worker_node_on_a_two_node_cluster(order: list[str]) -> None:
    out = run_in_own_process("tests.integration.multinode_scenario", 300, *order)
    assert out.returncode == 0, (
        f"the multi-node scenario exited with {out.returncode}\n"
        f"--- stdout (tail) ---\n{out.stdout[-6000:]}\n"
        f"--- stderr (tail) ---\n{out.stderr[-4000:]}"
    )
    assert "MULTINODE SCENARIO PASSED" in out.stdout, out.stdout[-4000:]
