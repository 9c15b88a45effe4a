"""What a client has read, judged from its answers to our pings. No sockets here.

Ray Serve's replica hands outgoing frames to its proxy without waiting, so a client that
stops reading never blocks our writer: its frames pile up in memory instead. A client that
reads answers a ping only after every frame sent before it, so each answered ping tells how
many bytes the client has taken. A client is *slow* when a ping stays unanswered for
``max_lag`` seconds while frames were sent after it, or when more than ``max_unread_bytes``
went out that it has not confirmed; it is *gone* when nothing at all was heard from it for
``heartbeat_timeout`` seconds. The writer also uses the confirmed count as a send window:
it stops handing frames to Serve while more than a window is unconfirmed.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from enum import StrEnum


class Verdict(StrEnum):
    OK = "ok"
    SLOW = "slow consumer"
    GONE = "heartbeat timeout"


@dataclass
class HeartbeatLimits:
    heartbeat_timeout: float
    max_lag: float
    max_unread_bytes: int


class Heartbeat:
    def __init__(self, now: float) -> None:
        self.last_heard = now
        self.bytes_sent = 0
        self.bytes_read = 0  # confirmed by an answered ping
        self.frames_sent = 0  # frames other than our pings
        # ping id -> (sent at, bytes sent up to and with it, frames sent before it)
        self._pings: OrderedDict[int, tuple[float, int, int]] = OrderedDict()
        self._next_id = 1
        self._last_ping_mark = 0

    def sent(self, nbytes: int) -> None:
        """Count a frame handed to the socket."""
        self.bytes_sent += nbytes
        self.frames_sent += 1

    @property
    def unread(self) -> int:
        """Bytes handed to the socket that the client has not confirmed reading."""
        return self.bytes_sent - self.bytes_read

    @property
    def since_last_ping(self) -> int:
        return self.bytes_sent - self._last_ping_mark

    def heard(self, now: float) -> None:
        self.last_heard = now

    def next_ping_id(self) -> int:
        ping_id = self._next_id
        self._next_id += 1
        return ping_id

    def ping(self, ping_id: int, now: float, nbytes: int) -> None:
        """Record a ping of ``nbytes`` handed to the socket now, after everything before."""
        self.bytes_sent += nbytes
        self._last_ping_mark = self.bytes_sent
        self._pings[ping_id] = (now, self.bytes_sent, self.frames_sent)

    def pong(self, ping_id: object, now: float) -> None:
        """A pong: with the ping's id, everything before that ping was read; without one,
        it answers the oldest ping still open."""
        self.heard(now)
        if isinstance(ping_id, int) and ping_id in self._pings:
            while self._pings:
                pid, (_, mark, _) = self._pings.popitem(last=False)
                self.bytes_read = max(self.bytes_read, mark)
                if pid == ping_id:
                    break
        elif self._pings:
            _, (_, mark, _) = self._pings.popitem(last=False)
            self.bytes_read = max(self.bytes_read, mark)

    @property
    def open_pings(self) -> int:
        return len(self._pings)

    def verdict(self, now: float, limits: HeartbeatLimits) -> Verdict:
        if self.bytes_sent - self.bytes_read > limits.max_unread_bytes:
            return Verdict.SLOW
        if self._pings:
            sent_at, _, frames_before = next(iter(self._pings.values()))
            if now - sent_at > limits.max_lag and self.frames_sent > frames_before:
                return Verdict.SLOW
        if now - self.last_heard > limits.heartbeat_timeout:
            return Verdict.GONE
        return Verdict.OK
