"""Who receives an event: matches() and the SubscriptionIndex."""

from __future__ import annotations

import pytest

from control_plane.core.hub_log import TARGET_ALL, TARGET_CHANNEL, LogEntry, client_target
from control_plane.core.protocol import LIFECYCLE_TYPES
from control_plane.core.routing import SubscriptionIndex, matches

LIFECYCLE = sorted(LIFECYCLE_TYPES)
AGENT = ["agent.started", "agent.output", "agent.completed", "agent.failed"]


def entry(channel: str, event_type: str, target: str = TARGET_CHANNEL) -> LogEntry:
    return LogEntry(1, channel, event_type, target, "{}")


def index_with(subs: dict[str, list[str]]) -> SubscriptionIndex:
    index = SubscriptionIndex()
    for client, channels in subs.items():
        index.add_client(client)
        index.subscribe(client, channels)
    return index


# --- matches --------------------------------------------------------------------------------


@pytest.mark.parametrize("event_type", [*LIFECYCLE, "job.progress", *AGENT, "app.note"])
def test_a_job_channel_gets_every_event_of_that_job(event_type):
    assert matches(["job:a"], "job:a", event_type)
    assert not matches(["job:b"], "job:a", event_type)


@pytest.mark.parametrize("event_type", LIFECYCLE)
def test_jobs_gets_the_lifecycle_of_every_job(event_type):
    assert matches(["jobs"], "job:a", event_type)
    assert matches(["jobs"], "job:b", event_type)


@pytest.mark.parametrize("event_type", ["job.progress", *AGENT, "app.note"])
def test_jobs_does_not_get_progress_agents_or_custom_events(event_type):
    assert not matches(["jobs"], "job:a", event_type)


def test_system_gets_system_events_only():
    assert matches(["system"], "system", "system.metrics")
    assert matches(["system"], "system", "system.alert")
    assert not matches(["system"], "job:a", "job.started")
    assert not matches(["jobs"], "system", "system.alert")


@pytest.mark.parametrize(
    ("channel", "event_type"),
    [("job:a", "job.progress"), ("job:b", "agent.output"), ("system", "system.metrics")],
)
def test_star_gets_everything(channel, event_type):
    assert matches(["*"], channel, event_type)


def test_no_channels_match_nothing():
    assert not matches([], "job:a", "job.started")


# --- SubscriptionIndex ----------------------------------------------------------------------


def test_recipients_of_a_progress_event_are_its_job_and_star_subscribers():
    index = index_with(
        {"a": ["job:1"], "b": ["job:2"], "c": ["jobs"], "d": ["*"], "e": ["system"], "f": []}
    )
    assert index.recipients(entry("job:1", "job.progress")) == {"a", "d"}


def test_recipients_of_a_lifecycle_event_include_jobs_subscribers():
    index = index_with({"a": ["job:1"], "b": ["job:2"], "c": ["jobs"], "d": ["*"]})
    assert index.recipients(entry("job:1", "job.completed")) == {"a", "c", "d"}


def test_agent_events_do_not_reach_jobs_subscribers():
    index = index_with({"a": ["job:1"], "c": ["jobs"]})
    assert index.recipients(entry("job:1", "agent.output")) == {"a"}


def test_system_events_reach_system_and_star_subscribers():
    index = index_with({"a": ["job:1"], "c": ["jobs"], "d": ["*"], "e": ["system"]})
    assert index.recipients(entry("system", "system.alert")) == {"d", "e"}


def test_a_client_on_several_matching_channels_is_listed_once():
    index = index_with({"a": ["job:1", "jobs", "*"]})
    assert index.recipients(entry("job:1", "job.started")) == {"a"}


def test_a_broadcast_reaches_every_client_whatever_it_subscribed_to():
    index = index_with({"a": ["job:1"], "b": ["system"], "c": []})
    assert index.recipients(entry("system", "app.note", TARGET_ALL)) == {"a", "b", "c"}


def test_a_client_target_reaches_that_client_only():
    index = index_with({"a": ["*"], "b": [], "c": ["job:1"]})
    assert index.recipients(entry("job:1", "job.progress", client_target("b"))) == {"b"}


def test_a_client_target_for_an_unknown_client_reaches_nobody():
    index = index_with({"a": ["*"]})
    assert index.recipients(entry("system", "app.note", client_target("zz"))) == set()


def test_subscribe_returns_only_the_new_channels():
    index = SubscriptionIndex()
    assert index.subscribe("a", ["jobs", "job:1"]) == {"jobs", "job:1"}
    assert index.subscribe("a", ["jobs", "system"]) == {"system"}
    assert index.channels_of("a") == frozenset({"jobs", "job:1", "system"})


def test_unsubscribe_stops_delivery_on_that_channel_only():
    index = index_with({"a": ["job:1", "jobs"]})
    index.unsubscribe("a", ["job:1", "never-subscribed"])
    assert index.channels_of("a") == frozenset({"jobs"})
    assert index.recipients(entry("job:1", "job.progress")) == set()
    assert index.recipients(entry("job:1", "job.started")) == {"a"}
    assert "a" in index.clients()


def test_unsubscribe_of_an_unknown_client_is_harmless():
    index = SubscriptionIndex()
    index.unsubscribe("ghost", ["jobs"])
    assert len(index) == 0


def test_remove_client_forgets_it_everywhere():
    index = index_with({"a": ["job:1", "jobs", "*"], "b": ["job:1"]})
    index.remove_client("a")
    assert len(index) == 1
    assert index.channels_of("a") == frozenset()
    assert index.recipients(entry("job:1", "job.started")) == {"b"}
    assert index.recipients(entry("system", "x.y", TARGET_ALL)) == {"b"}
    index.remove_client("a")  # twice is harmless


def test_a_client_without_subscriptions_is_still_known():
    index = SubscriptionIndex()
    index.add_client("a")
    assert list(index.clients()) == ["a"]
    assert index.channels_of("a") == frozenset()
    assert index.recipients(entry("job:1", "job.started")) == set()


def test_the_index_drops_channels_nobody_holds():
    index = index_with({"a": ["job:1"]})
    index.unsubscribe("a", ["job:1"])
    assert index._by_channel == {}
