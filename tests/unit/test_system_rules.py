"""AlertRules: each system.alert once per occurrence (no Ray)."""

from __future__ import annotations

from control_plane.core.protocol import make_event, normalize_event
from control_plane.core.registry import JobRecord, JobRegistry
from control_plane.core.system import AlertRules, SystemConfig


def rules(**config) -> AlertRules:
    return AlertRules(SystemConfig(**config))


def valid(alerts: list[dict]) -> list[dict]:
    """Every alert is valid system.alert data."""
    for alert in alerts:
        normalize_event({"type": "system.alert", "data": alert})
    return alerts


def test_the_first_view_of_the_cluster_raises_no_alert():
    assert rules().nodes({"n1", "n2"}) == []


def test_a_node_that_leaves_raises_an_error_alert_once():
    r = rules()
    r.nodes({"node-aaaaaaaaaaaaaaaa", "n2"})
    (alert,) = valid(r.nodes({"n2"}))
    assert alert["level"] == "error"
    assert alert["rule"] == "node_left"
    assert alert["node_id"] == "node-aaaaaaaaaaaaaaaa"
    assert "node-aaaaaaa left" in alert["message"]  # the id is shortened
    assert r.nodes({"n2"}) == []


def test_a_node_that_joins_raises_an_info_alert_once():
    r = rules()
    r.nodes({"n1"})
    (alert,) = valid(r.nodes({"n1", "n2"}))
    assert alert["level"] == "info"
    assert alert["rule"] == "node_joined"
    assert alert["node_id"] == "n2"
    assert "joined" in alert["message"]
    assert r.nodes({"n1", "n2"}) == []


def test_nodes_leaving_and_joining_at_once_give_one_alert_each():
    r = rules()
    r.nodes({"a", "b"})
    alerts = valid(r.nodes({"b", "c"}))
    assert [(a["rule"], a["node_id"]) for a in alerts] == [("node_left", "a"), ("node_joined", "c")]


def registry_with_running_job() -> tuple[JobRegistry, JobRecord]:
    registry = JobRegistry()
    rec = JobRecord("j1", "countdown", "alice", "t")
    registry.add(rec)
    registry.apply(make_event("job.started", {"job_id": "j1", "status": "running"}))
    return registry, rec


def test_a_stalled_job_raises_a_warning_once_per_stall():
    r = rules(stall_after=10)
    registry, rec = registry_with_running_job()
    assert r.stalls(registry, now=rec.last_change + 5) == []
    (alert,) = valid(r.stalls(registry, now=rec.last_change + 12))
    assert alert["level"] == "warning"
    assert alert["rule"] == "job_stalled"
    assert alert["job_id"] == "j1"
    assert "j1" in alert["message"]
    assert "countdown" in alert["message"]
    assert "12 s" in alert["message"]
    assert r.stalls(registry, now=rec.last_change + 50) == []  # same stall: no repeat


def test_a_job_that_speaks_again_and_stalls_again_raises_a_new_alert():
    r = rules(stall_after=10)
    registry, rec = registry_with_running_job()
    assert len(r.stalls(registry, now=rec.last_change + 11)) == 1
    registry.apply(make_event("job.progress", {"job_id": "j1", "status": "running", "progress": 5}))
    assert r.stalls(registry, now=rec.last_change + 1) == []
    assert len(r.stalls(registry, now=rec.last_change + 11)) == 1


def test_paused_and_finished_jobs_never_stall():
    r = rules(stall_after=10)
    registry, rec = registry_with_running_job()
    registry.apply(make_event("job.paused", {"job_id": "j1", "status": "paused"}))
    assert r.stalls(registry, now=rec.last_change + 1000) == []
    registry.apply(make_event("job.completed", {"job_id": "j1", "status": "completed"}))
    assert r.stalls(registry, now=rec.last_change + 1000) == []


def test_a_full_history_raises_one_alert_per_crossing():
    r = rules(history_alert_fill=0.9)
    assert r.history(0.5, 50, 100) == []
    (alert,) = valid(r.history(0.9, 90, 100))
    assert alert["level"] == "warning"
    assert alert["rule"] == "history_full"
    assert "90/100" in alert["message"]
    assert r.history(0.95, 95, 100) == []  # still full: no repeat
    assert r.history(0.5, 50, 100) == []  # back below: armed again
    assert len(r.history(1.0, 100, 100)) == 1
