"""Jobs that outlive their controller, their actor and their node: ``durability_scenario``
on a several-node ``Cluster``, in its own process (a driver connects to one Ray at a time,
and this session's Ray is the tests' shared one). It runs once for the module; each test
reads whether its check passed."""

from __future__ import annotations

import re

import pytest

from tests.integration.multinode_scenario import run_in_own_process

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def scenario() -> str:
    out = run_in_own_process("tests.integration.durability_scenario", 600)
    return out.stdout + f"\n--- stderr (tail) ---\n{out.stderr[-4000:]}\nEXIT {out.returncode}"


def passed(scenario: str, check: str) -> None:
    if f"CHECK {check} OK" not in scenario:
        tail = "\n".join(line for line in scenario.splitlines() if "raylet" not in line)
        pytest.fail(f"check {check} did not pass:\n{tail[-6000:]}")


@pytest.mark.timeout(660)
def test_a_sigkilled_controller_comes_back_with_every_job_state_and_result(scenario: str):
    passed(scenario, "controller_restart")


@pytest.mark.timeout(660)
def test_a_job_actor_dying_while_the_controller_is_down_or_after_is_restarted(scenario: str):
    passed(scenario, "deaths_around_a_controller_restart")


@pytest.mark.timeout(660)
def test_a_job_whose_node_is_lost_restarts_elsewhere_from_its_last_save(scenario: str):
    passed(scenario, "node_loss_restart")


@pytest.mark.timeout(660)
def test_without_restarts_a_lost_node_fails_the_job_naming_the_node(scenario: str):
    passed(scenario, "node_loss_no_restarts")


@pytest.mark.timeout(660)
def test_a_job_that_never_saved_cannot_be_suspended(scenario: str):
    passed(scenario, "not_suspendable")


@pytest.mark.timeout(660)
def test_a_suspended_job_frees_its_cpu_and_resumes_on_another_node(scenario: str):
    passed(scenario, "suspend_resume")


@pytest.mark.timeout(660)
def test_the_scenario_cleans_up_and_exits_zero(scenario: str):
    assert re.search(r"DURABILITY SCENARIO PASSED", scenario), scenario[-3000:]
    assert scenario.rstrip().endswith("EXIT 0"), scenario[-3000:]
