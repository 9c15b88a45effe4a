"""Which sockets get which event: the subscription index. No Ray, no sockets.

A client subscribes to channels: ``job:<id>`` (every event of that job and its agents),
``jobs`` (every job's lifecycle events), ``system`` and ``*`` (all); which of them receive an
event is :func:`~control_plane.core.protocol.receiving_channels`, the one statement of that
rule. An event lives on one channel; the index answers "who receives this entry" in time
proportional to the answer, not to the number of clients, so a fan-out to many sockets stays
cheap.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from control_plane.core.hub_log import CLIENT_TARGET_PREFIX, TARGET_ALL, LogEntry
from control_plane.core.protocol import receiving_channels


def matches(channels: Iterable[str], channel: str, event_type: str) -> bool:
    """Whether a subscription to ``channels`` receives an event on ``channel``."""
    return not set(channels).isdisjoint(receiving_channels(channel, event_type))


class SubscriptionIndex:
    """client id → channels, and channel → client ids, kept in step."""

    def __init__(self) -> None:
        self._by_client: dict[str, set[str]] = {}
        self._by_channel: defaultdict[str, set[str]] = defaultdict(set)

    def add_client(self, client_id: str) -> None:
        self._by_client.setdefault(client_id, set())

    def subscribe(self, client_id: str, channels: Iterable[str]) -> set[str]:
        """Add channels; return the ones that are new for this client."""
        mine = self._by_client.setdefault(client_id, set())
        new = set(channels) - mine
        for channel in new:
            mine.add(channel)
            self._by_channel[channel].add(client_id)
        return new

    def unsubscribe(self, client_id: str, channels: Iterable[str]) -> None:
        mine = self._by_client.get(client_id)
        if mine is None:
            return
        for channel in channels:
            if channel in mine:
                mine.discard(channel)
                self._drop(channel, client_id)

    def remove_client(self, client_id: str) -> None:
        for channel in self._by_client.pop(client_id, set()):
            self._drop(channel, client_id)

    def _drop(self, channel: str, client_id: str) -> None:
        holders = self._by_channel.get(channel)
        if holders is not None:
            holders.discard(client_id)
            if not holders:
                del self._by_channel[channel]

    def channels_of(self, client_id: str) -> frozenset[str]:
        return frozenset(self._by_client.get(client_id, ()))

    def channels(self) -> Iterable[str]:
        """Every channel some client subscribes to."""
        return self._by_channel.keys()

    def clients(self) -> Iterable[str]:
        return self._by_client.keys()

    def __len__(self) -> int:
        return len(self._by_client)

    def recipients(self, entry: LogEntry) -> set[str]:
        """Client ids that receive ``entry``."""
        if entry.target == TARGET_ALL:
            return set(self._by_client)
        if entry.target.startswith(CLIENT_TARGET_PREFIX):
            client_id = entry.target[len(CLIENT_TARGET_PREFIX) :]
            return {client_id} if client_id in self._by_client else set()
        out: set[str] = set()
        for channel in receiving_channels(entry.channel, entry.type):
            holders = self._by_channel.get(channel)
            if holders:
                out |= holders
        return out
