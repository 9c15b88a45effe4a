"""Where the gateway replicas listen, kept in Ray's own key-value store (the GCS).

Each replica announces its address when it starts and withdraws it when it stops, so a tool
attached to the cluster (``control-plane watch``) finds a gateway, on any node and port,
as the job commands find the cluster. An entry left by a replica that died without saying
so is skipped by whoever cannot connect to it, and replaced when Serve restarts it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass

from control_plane.actors import runtime

logger = logging.getLogger(__name__)

PREFIX = "gateway/"


@dataclass(frozen=True)
class GatewayAddress:
    replica: str
    host: str  # what the replica binds
    port: int
    node_ip: str  # its node's address

    @property
    def reachable_host(self) -> str:
        """Where a client connects: the node's address when the replica binds all."""
        return self.node_ip if self.host in ("0.0.0.0", "::", "") else self.host

    def base_url(self) -> str:
        host = self.reachable_host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"


def announce(address: GatewayAddress) -> None:
    from ray.experimental import internal_kv

    key = (PREFIX + address.replica).encode()
    value = json.dumps(asdict(address)).encode()
    internal_kv._internal_kv_put(key, value, overwrite=True, namespace=runtime.NAMESPACE)


def withdraw(replica: str) -> None:
    from ray.experimental import internal_kv

    try:
        internal_kv._internal_kv_del((PREFIX + replica).encode(), namespace=runtime.NAMESPACE)
    except Exception:  # Ray is going away too
        logger.debug("could not withdraw gateway %s", replica, exc_info=True)


def listed() -> list[GatewayAddress]:
    """Every announced gateway replica (some may have died since)."""
    from ray.experimental import internal_kv

    found = []
    for key in internal_kv._internal_kv_list(PREFIX.encode(), namespace=runtime.NAMESPACE):
        raw = internal_kv._internal_kv_get(key, namespace=runtime.NAMESPACE)
        if raw:
            found.append(GatewayAddress(**json.loads(raw)))
    return found


def nearest_first(addresses: list[GatewayAddress], local_ip: str) -> list[GatewayAddress]:
    """Replicas on this machine first (loopback-bound ones are reachable only there)."""
    here = [a for a in addresses if a.node_ip == local_ip]
    there = [a for a in addresses if a.node_ip != local_ip and a.host not in ("127.0.0.1", "::1")]
    return here + there
