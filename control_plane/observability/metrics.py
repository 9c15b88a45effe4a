"""The control plane's metrics, through Ray's own metrics system (``ray.util.metrics``).

Ray's metrics agent on each node exports them on the node's Prometheus endpoint (as
``ray_control_plane_*``) beside Ray's and Serve's own, so nothing new has to be served or
scraped. Every name, tag and description is in :data:`SPECS`; the metric objects are made
on first use, in the process (an actor, a gateway replica) that records them.

Why counting is not done here per event: a Ray metric call costs microseconds (a lock and
a tag lookup) and the hub takes hundreds of thousands of events a second. The cores count
in plain ints and :class:`collections.Counter`s; the shells call :meth:`Recorder.flush_counts`
and :meth:`Recorder.set` from a loop about once a second, so the cost does not grow with the
event rate. Tags stay low-cardinality: an event type (unknown ones fold into ``other``), a
command, a close code, a job state, a gateway replica; never a job or a client id.

``CONTROL_PLANE_METRICS=0`` in a process's environment, or :func:`set_enabled`, turns
recording off (the benchmark measures the same run with and without).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

ENV_SWITCH = "CONTROL_PLANE_METRICS"
FLUSH_INTERVAL = 1.0  # seconds between two flushes of a shell's counts
PREFIX = "control_plane_"
SECONDS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]


@dataclass(frozen=True)
class Spec:
    kind: str  # counter, gauge or histogram
    description: str
    tags: tuple[str, ...] = ()
    boundaries: tuple[float, ...] = ()


SPECS: Mapping[str, Spec] = {
    # the hub (actors/hub.py)
    "events_published": Spec("counter", "Events the hub was given to append, by type.", ("type",)),
    "events_appended": Spec("counter", "Events appended to the hub's log, by type.", ("type",)),
    "hub_history_events": Spec("gauge", "Events retained in the hub's history."),
    "hub_history_bytes": Spec("gauge", "Bytes of the frames retained in the hub's history."),
    "hub_head_seq": Spec("gauge", "The last seq the hub assigned."),
    # each gateway replica (gateway/manager.py, gateway/session.py)
    "reader_lag_events": Spec(
        "gauge", "Events between the hub's head and a gateway replica's cursor.", ("replica",)
    ),
    "sockets_open": Spec("gauge", "WebSockets open on a gateway replica.", ("replica",)),
    "frames_sent": Spec("counter", "Frames written to WebSockets (events and replies)."),
    "socket_closes": Spec(
        "counter",
        "WebSockets closed, by close code (4008 slow consumer, 1011 ping timeout).",
        ("code",),
    ),
    "command_seconds": Spec(
        "histogram",
        "A job command from its frame to its ack, by command and outcome.",
        ("command", "outcome"),
        tuple(SECONDS),
    ),
    # the controller (actors/controller.py)
    "submit_to_started_seconds": Spec(
        "histogram", "From a job's submit to its job.started.", (), tuple(SECONDS)
    ),
    "jobs": Spec("gauge", "Jobs the controller keeps, by state.", ("state",)),
    "job_restarts": Spec("counter", "Jobs restarted after their actor died."),
}

_KNOWN_TYPE_PREFIXES = ("job.", "agent.", "system.", "audit.")


def type_tag(event_type: str) -> str:
    """The ``type`` tag of an event type: the protocol's own, else ``other`` (a broadcast may
    carry any type; tags must not grow without bound)."""
    return event_type if event_type.startswith(_KNOWN_TYPE_PREFIXES) else "other"


_enabled = os.environ.get(ENV_SWITCH, "1").lower() not in ("0", "false", "no", "off")


def enabled() -> bool:
    return _enabled


def set_enabled(on: bool) -> None:
    """Turn recording on or off in this process."""
    global _enabled
    _enabled = on


class Recorder:
    """This process's Ray metric objects, made on first use, and the counts already sent."""

    def __init__(self) -> None:
        self._metrics: dict[str, Any] = {}
        self._sent: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

    def _metric(self, name: str) -> Any:
        metric = self._metrics.get(name)
        if metric is None:
            from ray.util import metrics

            spec = SPECS[name]
            full = PREFIX + name
            if spec.kind == "counter":
                metric = metrics.Counter(full, spec.description, tag_keys=spec.tags)
            elif spec.kind == "gauge":
                metric = metrics.Gauge(full, spec.description, tag_keys=spec.tags)
            else:
                metric = metrics.Histogram(
                    full, spec.description, list(spec.boundaries), tag_keys=spec.tags
                )
            self._metrics[name] = metric
        return metric

    def set(self, name: str, value: float, **tags: str) -> None:
        if _enabled:
            self._metric(name).set(value, tags=tags or None)

    def add(self, name: str, value: float = 1.0, **tags: str) -> None:
        if _enabled and value > 0:
            self._metric(name).inc(value, tags=tags or None)

    def observe(self, name: str, value: float, **tags: str) -> None:
        if _enabled:
            self._metric(name).observe(value, tags=tags or None)

    def flush_count(self, name: str, total: float, **tags: str) -> None:
        """Send what a cumulative count gained since the last flush."""
        if not _enabled:
            return
        key = (name, tuple(sorted(tags.items())))
        delta = total - self._sent.get(key, 0.0)
        if delta > 0:
            self._metric(name).inc(delta, tags=tags or None)
            self._sent[key] = total

    def flush_counts(
        self, name: str, tag: str, totals: Mapping[str, int], fold: Callable[[str], str] = str
    ) -> None:
        """:meth:`flush_count` for each key of ``totals`` (folded into a tag value)."""
        folded: dict[str, int] = {}
        for key, total in totals.items():
            value = fold(key)
            folded[value] = folded.get(value, 0) + total
        for value, total in folded.items():
            self.flush_count(name, total, **{tag: value})


_recorder: Recorder | None = None


def recorder() -> Recorder:
    """This process's :class:`Recorder`."""
    global _recorder
    if _recorder is None:
        _recorder = Recorder()
    return _recorder


async def flush_every(flush: Callable[[Recorder], None], interval: float = FLUSH_INTERVAL) -> None:
    """Call ``flush`` with this process's recorder every ``interval`` seconds, for ever (a
    shell runs it as a task); a failed flush is logged once a kind and never ends the loop."""
    seen: set[str] = set()
    rec = recorder()
    while True:
        await asyncio.sleep(interval)
        if not _enabled:
            continue
        try:
            flush(rec)
        except Exception as e:
            if type(e).__name__ not in seen:
                seen.add(type(e).__name__)
                logger.warning("flushing metrics failed", exc_info=True)
