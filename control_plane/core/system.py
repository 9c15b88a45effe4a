"""``system.metrics`` and ``system.alert``: figures read from Ray and simple alert rules.

:class:`AlertRules` is pure (fed numbers, returns alerts), so each rule is tested without a
cluster; :func:`collect_cluster_metrics` is the only part that asks Ray.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from control_plane.core.registry import JobRegistry


@dataclass
class SystemConfig:
    metrics_interval: float = 5.0  # seconds between system.metrics events
    stall_after: float = 300.0  # a running job with no event this long raises an alert
    history_alert_fill: float = 0.9  # alert when the hub history is this full


def collect_cluster_metrics() -> dict[str, Any]:
    """Nodes alive, CPU and memory used/total, from Ray's view of the cluster."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    total = ray.cluster_resources()
    available = ray.available_resources()
    cpu_total = float(total.get("CPU", 0.0))
    mem_total = float(total.get("memory", 0.0))
    return {
        "nodes_alive": len(nodes),
        "node_ids": sorted(n["NodeID"] for n in nodes),
        "cpu_total": cpu_total,
        "cpu_used": round(cpu_total - float(available.get("CPU", cpu_total)), 3),
        "memory_total": mem_total,
        "memory_used": round(mem_total - float(available.get("memory", mem_total)), 1),
    }


class AlertRules:
    """Turns successive observations into ``system.alert`` data, each alert once."""

    def __init__(self, config: SystemConfig) -> None:
        self.config = config
        self._known_nodes: set[str] | None = None
        self._history_alerted = False

    def nodes(self, alive: set[str]) -> list[dict[str, Any]]:
        alerts: list[dict[str, Any]] = []
        if self._known_nodes is not None:
            for node_id in sorted(self._known_nodes - alive):
                alerts.append(
                    {
                        "level": "error",
                        "message": f"node {node_id[:12]} left the cluster",
                        "rule": "node_left",
                        "node_id": node_id,
                    }
                )
            for node_id in sorted(alive - self._known_nodes):
                alerts.append(
                    {
                        "level": "info",
                        "message": f"node {node_id[:12]} joined the cluster",
                        "rule": "node_joined",
                        "node_id": node_id,
                    }
                )
        self._known_nodes = set(alive)
        return alerts

    def stalls(self, registry: JobRegistry, now: float | None = None) -> list[dict[str, Any]]:
        now = time.monotonic() if now is None else now
        alerts = []
        for record in registry.stalled(now, self.config.stall_after):
            record.stall_alerted = True
            alerts.append(
                {
                    "level": "warning",
                    "message": (
                        f"job {record.job_id} ({record.name}) made no progress for "
                        f"{now - record.last_change:.0f} s"
                    ),
                    "rule": "job_stalled",
                    "job_id": record.job_id,
                }
            )
        return alerts

    def history(self, fill: float, size: int, capacity: int) -> list[dict[str, Any]]:
        if fill >= self.config.history_alert_fill:
            if not self._history_alerted:
                self._history_alerted = True
                return [
                    {
                        "level": "warning",
                        "message": (
                            f"hub history is {fill:.0%} full ({size}/{capacity}); the oldest "
                            "events will be dropped and clients resuming from them told so"
                        ),
                        "rule": "history_full",
                    }
                ]
        else:
            self._history_alerted = False
        return []
