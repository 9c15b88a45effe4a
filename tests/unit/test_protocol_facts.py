"""Each protocol fact has one source in ``control_plane/core/protocol.py``; everything else that
states it is derived from it or, where it cannot import it (the browser's ``cp-client.js``),
checked against it here.

The JS client runs under ``node``: the same table of (subscription, event channel, event type)
cases and the same close codes go through its port and through Python's source, and the
answers must agree. A machine without ``node`` fails these tests (CI machines have it); it does
not skip them, so that a drift is never hidden by a missing tool.
"""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

import control_plane
from control_plane.core.encoding import Encoded
from control_plane.core.hub_log import EventLog, LogEntry, ReaderFilter, taker
from control_plane.core.protocol import (
    EVENT_DATA_MODELS,
    JOB_EVENT_TYPES,
    LIFECYCLE_TYPES,
    NETWORK_LOSS,
    REFUSAL_CODES,
    STATE_BY_EVENT,
    TERMINAL_EVENT_TYPES,
    TYPE_RECEIVER_SETS,
    CloseCode,
    normalize_event,
    receivers_of_type,
    receiving_channels,
    reconnects_after,
)
from control_plane.core.registry import JobRecord, JobRegistry
from control_plane.core.routing import SubscriptionIndex, matches
from jobs.context import JobControl
from jobs.lifecycle import JobState, Trigger

CP_CLIENT_JS = Path(control_plane.__file__).parent / "gateway" / "static" / "cp-client.js"

# Every event type the protocol names, and one of a user's own (``ctx.emit("app.note")``).
EVENT_TYPES = sorted({*EVENT_DATA_MODELS, *JOB_EVENT_TYPES, *LIFECYCLE_TYPES, "app.note"})
CHANNELS = ["*", "jobs", "system", "job:a", "job:b"]
CASES = list(itertools.product(CHANNELS, CHANNELS, EVENT_TYPES))  # (subscription, channel, type)
# Every code of the table, the network loss, and codes the gateway never sends: the old
# heartbeat timeout (4000), protocol errors a library reports, other 1xxx/4xxx codes.
CLOSE_CODES = sorted({*CloseCode, NETWORK_LOSS, 1001, 1002, 1003, 1005, 1007, 1008, 4000, 4400})

_NODE_SCRIPT = """
const client = require(process.argv[1]);
const input = JSON.parse(require("fs").readFileSync(0, "utf8"));
process.stdout.write(JSON.stringify({
  matches: input.cases.map(([sub, channel, type]) => client.matches(sub, {channel, type})),
  reconnects: input.codes.map((code) => client.reconnectsAfter(code)),
  LIFECYCLE: client.LIFECYCLE,
  CLOSE_CODES: client.CLOSE_CODES,
  NO_RETRY: client.NO_RETRY,
  REFUSED: client.REFUSED,
  NETWORK_LOSS: client.NETWORK_LOSS,
}));
"""


@pytest.fixture(scope="module")
def js() -> dict[str, Any]:
    """What cp-client.js answers for every case, from one run of ``node``."""
    node = shutil.which("node")
    if node is None:
        pytest.fail(
            "node is not on PATH: these tests run cp-client.js under Node.js to check it "
            "against protocol.py. Install Node.js (v18 or newer) and run them again."
        )
    out = subprocess.run(
        [node, "-e", _NODE_SCRIPT, str(CP_CLIENT_JS)],
        input=json.dumps({"cases": CASES, "codes": CLOSE_CODES}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, f"node failed on {CP_CLIENT_JS}:\n{out.stderr}"
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def python_matches(sub: str, channel: str, event_type: str) -> bool:
    return sub in receiving_channels(channel, event_type)


# --- the channel rule ---------------------------------------------------------------------


def test_the_rule_reads_as_the_contract_says() -> None:
    assert receiving_channels("job:a", "job.progress") == ("job:a", "*")
    assert receiving_channels("job:a", "job.paused") == ("job:a", "*", "jobs")
    assert receiving_channels("job:a", "agent.output") == ("job:a", "*")
    assert receiving_channels("system", "system.alert") == ("system", "*")
    assert receiving_channels("job:a", "app.note") == ("job:a", "*")


def test_every_answer_by_type_is_one_the_filters_know_of() -> None:
    for event_type in EVENT_TYPES:
        assert receivers_of_type(event_type) in TYPE_RECEIVER_SETS, event_type


def test_the_js_client_matches_as_the_protocol_rule_does(js: dict[str, Any]) -> None:
    wrong = [
        (sub, channel, event_type, got)
        for (sub, channel, event_type), got in zip(CASES, js["matches"], strict=True)
        if got != python_matches(sub, channel, event_type)
    ]
    assert not wrong, f"cp-client.js disagrees with protocol.receiving_channels on {wrong}"


def test_routing_matches_follows_the_rule() -> None:
    wrong = [
        case for case in CASES if matches([case[0]], case[1], case[2]) != python_matches(*case)
    ]
    assert not wrong


def test_the_hub_filter_follows_the_rule_for_every_subscription_set() -> None:
    """Each set of subscription channels (all 32), as a hub reader filter, over every case."""
    for size in range(len(CHANNELS) + 1):
        for subs in itertools.combinations(CHANNELS, size):
            take = taker(ReaderFilter(frozenset(subs)))
            for channel, event_type in itertools.product(CHANNELS, EVENT_TYPES):
                expected = any(python_matches(s, channel, event_type) for s in subs)
                assert take(channel, event_type, "") is expected, (subs, channel, event_type)


def test_the_subscription_index_follows_the_rule() -> None:
    index = SubscriptionIndex()
    for sub in CHANNELS:
        index.add_client(f"on {sub}")
        index.subscribe(f"on {sub}", [sub])
    for channel, event_type in itertools.product(CHANNELS, EVENT_TYPES):
        got = index.recipients(LogEntry(1, channel, event_type, "", "{}"))
        assert got == {f"on {s}" for s in CHANNELS if python_matches(s, channel, event_type)}


def test_the_js_lifecycle_table_is_the_protocols(js: dict[str, Any]) -> None:
    assert len(js["LIFECYCLE"]) == len(set(js["LIFECYCLE"]))
    assert set(js["LIFECYCLE"]) == LIFECYCLE_TYPES


# --- close codes ----------------------------------------------------------------------------


def test_the_js_close_code_table_is_closecode(js: dict[str, Any]) -> None:
    assert js["CLOSE_CODES"] == {code.name.lower(): code.value for code in CloseCode}
    assert sorted(js["NO_RETRY"]) == sorted(code for code in CloseCode if not code.retry)
    assert sorted(js["REFUSED"]) == sorted(REFUSAL_CODES)
    assert js["NETWORK_LOSS"] == NETWORK_LOSS


def test_the_js_client_reconnects_after_the_same_codes(js: dict[str, Any]) -> None:
    wrong = [
        (code, got)
        for code, got in zip(CLOSE_CODES, js["reconnects"], strict=True)
        if got != reconnects_after(code)
    ]
    assert not wrong, f"cp-client.js disagrees with protocol.reconnects_after on {wrong}"


def test_clients_come_back_after_a_network_loss_and_what_closecode_retries() -> None:
    assert reconnects_after(None)  # the connection was never made
    assert reconnects_after(NETWORK_LOSS)
    for code in CloseCode:
        assert reconnects_after(code) is code.retry


def test_clients_come_back_after_a_proxys_or_an_older_gateways_code() -> None:
    for code in (1001, 1005, 1013, 4000):
        assert reconnects_after(code), code


def test_clients_do_not_come_back_after_a_protocol_error_or_any_refusal() -> None:
    for code in (1002, 1003, 1007, 1008, 4400, 4409):
        assert not reconnects_after(code), code


def test_a_refusal_is_never_retried() -> None:
    assert {CloseCode.UNAUTHORIZED, CloseCode.FORBIDDEN_ORIGIN} == REFUSAL_CODES
    assert not any(code.retry for code in REFUSAL_CODES)


# --- event → job state --------------------------------------------------------------------


def test_the_state_table_names_job_states_and_covers_the_lifecycle() -> None:
    assert {JobState(state) for state in STATE_BY_EVENT.values()} <= set(JobState)
    assert frozenset(STATE_BY_EVENT) == LIFECYCLE_TYPES == JOB_EVENT_TYPES - {"job.progress"}
    terminal = {event for event, state in STATE_BY_EVENT.items() if JobState(state).terminal}
    assert terminal == TERMINAL_EVENT_TYPES


@pytest.mark.parametrize("event_type", sorted(LIFECYCLE_TYPES))
def test_a_lifecycle_event_without_status_carries_its_state(event_type: str) -> None:
    event = normalize_event(
        {"type": event_type, "job_id": "j", "error": "e", "attempt": 1, "reason": "r"}
    )
    assert event["data"]["status"] == STATE_BY_EVENT[event_type]


@pytest.mark.parametrize("event_type", sorted(LIFECYCLE_TYPES))
def test_the_registry_moves_a_job_to_the_state_its_event_reports(event_type: str) -> None:
    registry = JobRegistry()
    registry.add(JobRecord("j", "countdown", "alice", "t"))
    record = registry.apply(
        {"type": event_type, "timestamp": "t", "seq": 1, "data": {"job_id": "j"}}
    )
    assert record is not None
    assert record.state == JobState(STATE_BY_EVENT[event_type])


@pytest.mark.parametrize("trigger", [Trigger.COMPLETE, Trigger.FAIL, Trigger.STOPPED])
def test_a_finishing_job_emits_the_event_of_its_new_state(trigger: Trigger) -> None:
    log = EventLog()

    def emit(encoded: Encoded, urgent: bool) -> None:
        log.append_encoded([encoded])

    control = JobControl("j", "countdown", "alice", "t", emit)
    control.start()
    assert control.finish(trigger, error="boom", forced=False, result=None)
    last = log.read(0)[-1]
    assert JobState(STATE_BY_EVENT[last.type]) is control.state
    assert control.state.terminal
