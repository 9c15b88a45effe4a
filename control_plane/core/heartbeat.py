"""What the server judges of a socket beyond what RFC 6455 pings tell. No sockets here.

Liveness comes from the WebSocket protocol itself: the gateway's server (uvicorn) sends
ping frames every ``heartbeat_interval`` and closes a socket whose pong does not come
within ``heartbeat_timeout``; browsers and every WebSocket library answer them by
themselves, so a plain client that only reads stays connected, however long it has
nothing to say. (The old application-level heartbeat closed such clients after 45 s, and
its send window, made for Serve's proxy, closed clients that read at full speed.)

Two things are left to judge here, from what the socket's writer does:

* a socket whose writer has been blocked on one frame for ``max_lag`` seconds has a client
  that reads nothing (its TCP window stayed shut): it is *slow* (4008), even when too few
  events come to overflow its send queue, and the close does not wait for a pong that
  is stuck behind the unread frames;
* a socket that never subscribes within ``subscribe_deadline`` is closed (4001).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Verdict(StrEnum):
    OK = "ok"
    SLOW = "slow consumer"
    NO_SUBSCRIBE = "no subscribe in time"


@dataclass(frozen=True)
class HeartbeatLimits:
    max_lag: float  # seconds one send may stay blocked
    subscribe_deadline: float  # seconds from connect to the first subscribe


class Heartbeat:
    __slots__ = ("_blocked_since", "connected_at", "subscribed")

    def __init__(self, now: float) -> None:
        self.connected_at = now
        self.subscribed = False
        self._blocked_since: float | None = None  # a send in progress since then

    def sending(self, now: float) -> None:
        """The writer hands a frame to the socket (it may wait for the peer to read)."""
        self._blocked_since = now

    def sent(self) -> None:
        """The socket took the frame."""
        self._blocked_since = None

    def blocked_for(self, now: float) -> float:
        """Seconds the current send has waited (0 when the writer is not in a send)."""
        return 0.0 if self._blocked_since is None else now - self._blocked_since

    def verdict(self, now: float, limits: HeartbeatLimits) -> Verdict:
        if self.blocked_for(now) > limits.max_lag:
            return Verdict.SLOW
        if not self.subscribed and now - self.connected_at > limits.subscribe_deadline:
            return Verdict.NO_SUBSCRIBE
        return Verdict.OK
