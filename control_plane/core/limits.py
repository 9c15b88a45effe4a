"""The limits that keep one client or one job from hurting the others. No Ray, no FastAPI.

Each limit is checked where it is cheapest and nearest to its cause:

* a client frame's JSON nesting (:func:`nesting_depth`), before ``json.loads`` recurses
  into it (40,000 ``[`` made the parser raise ``RecursionError`` and killed the session);
* an event's size, type and numbers where it is made (``jobs.context``) and again where it
  is appended (the hub): :func:`check_event` and :func:`check_encoded`. An event larger than
  any client takes would sit in the history and be replayed to every client that resumes;
  a job that emits ``ack`` or ``error`` could resolve a client's pending request; a NaN
  breaks the browser's ``JSON.parse``;
* a socket's requests: a :class:`TokenBucket` per socket (burst, then a steady rate);
* a close reason: RFC 6455 allows 123 bytes of UTF-8 (:func:`close_reason`).

The sessions' and the hub's own counters (subscriptions, subscribes in flight, sockets per
principal, history bytes) live where the state they count does.
"""

from __future__ import annotations

import math
import re
from operator import itemgetter
from typing import Any

from control_plane.core.errors import EventTooLargeError, InvalidEventError

DEFAULT_MAX_EVENT_BYTES = 1_000_000
"""An event's frame, in bytes: under the 1 MiB that WebSocket libraries take by default
(``websockets``' ``max_size``), with room for the ``seq`` the hub splices in."""

DEFAULT_MAX_DEPTH = 32
"""A client frame's JSON nesting; a valid request is two deep."""

DEFAULT_SUBSCRIBES_IN_FLIGHT = 4
"""Subscribes a socket may have waiting for their acks (each may replay history); the
clients resume in groups of this many."""

MAX_REQUEST_ID_CHARS = 128
"""A request id (``id``) as a string; as an integer it must fit in 64 bits."""

MAX_CLOSE_REASON_BYTES = 123
"""RFC 6455 §5.5: a control frame's payload is at most 125 bytes, two of them the code."""

SERVER_ONLY_TYPES = frozenset({"ack", "error", "pong", "welcome", "job.snapshot"})
"""Frame types only the gateway sends (replies and its own frames): no event may take them,
or a job could answer a client's request."""

_TYPE_RE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
_checked_types: dict[str, str | None] = {}  # event type -> why it is refused (None: fine)


# --- client frames -----------------------------------------------------------------------

_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"?', re.DOTALL)
_NOT_BRACKETS = re.compile(r"[^\[\]{}]+")


def nesting_depth(text: str, limit: int) -> int:
    """The JSON nesting of ``text`` if it is over ``limit``, else 0 (or less).

    Cheap on the common frame: with no more brackets than ``limit`` it cannot be deeper,
    and that is counted in C. Otherwise strings are cut out (a bracket in a string nests
    nothing) and the brackets counted in one pass.
    """
    if text.count("[") + text.count("{") <= limit:
        return 0
    brackets = _NOT_BRACKETS.sub("", _STRINGS.sub("", text))
    depth = deepest = 0
    for char in brackets:
        if char in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    return deepest
        else:
            depth -= 1
    return 0


def request_id_problem(value: Any) -> str | None:
    """Why ``value`` cannot be a request id (too long, too large), or None."""
    if isinstance(value, str) and len(value) > MAX_REQUEST_ID_CHARS:
        return f"id is {len(value)} characters long; at most {MAX_REQUEST_ID_CHARS}"
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
        return "id must fit in a signed 64-bit integer"
    return None


def close_reason(text: str) -> str:
    """``text`` cut to the 123 bytes of UTF-8 a close frame holds, on a character boundary."""
    data = text.encode("utf-8", "replace")
    if len(data) <= MAX_CLOSE_REASON_BYTES:
        return text
    return data[:MAX_CLOSE_REASON_BYTES].decode("utf-8", "ignore")


class TokenBucket:
    """``burst`` requests at once, then ``rate`` a second. Time is passed in (tests)."""

    __slots__ = ("_at", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a token bucket needs rate > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._at = now

    def take(self, now: float) -> bool:
        """Take one token if there is one; False when the caller is over the rate."""
        tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if tokens < 1:
            self._tokens = tokens
            return False
        self._tokens = tokens - 1
        return True


# --- events ------------------------------------------------------------------------------


def event_type_problem(event_type: str) -> str | None:
    """Why no event may have type ``event_type``, or None (cached: types are few)."""
    try:
        return _checked_types[event_type]
    except KeyError:
        pass
    why: str | None = None
    if event_type in SERVER_ONLY_TYPES:
        why = f"{event_type!r} frames are the gateway's own; an event cannot have that type"
    elif not isinstance(event_type, str) or not _TYPE_RE.match(event_type):
        why = f"an event type is dotted lowercase (like app.note), not {event_type!r}"
    if len(_checked_types) < 10_000:
        _checked_types[event_type] = why
    return why


def check_event_type(event_type: str) -> None:
    why = event_type_problem(event_type)
    if why is not None:
        raise InvalidEventError(why)


def check_finite(name: str, value: float) -> float:
    """``value`` as a float, or :class:`InvalidEventError` for NaN and ±Infinity."""
    number = float(value)
    if not math.isfinite(number):
        raise InvalidEventError(f"{name} must be a finite number, not {number!r}")
    return number


def too_large(event_type: str, size: int, limit: int) -> EventTooLargeError:
    return EventTooLargeError(
        f"a {event_type} event of {size} bytes is over the {limit}-byte event size limit",
        size,
        limit,
    )


def check_encoded(event: tuple[str, str, str, str], limit: int) -> None:
    """Refuse an encoded event (``encoding.Encoded``) of a server-only type or over
    ``limit`` bytes. Its frame is ASCII (``jsonwire``), so characters are bytes."""
    event_type, _, head, tail = event
    check_event_type(event_type)
    size = len(head) + len(tail)
    if size > limit:
        raise too_large(event_type, size, limit)


def check_batch(events: list[tuple[str, str, str, str]], limit: int) -> None:
    """:func:`check_encoded` for each event of a batch the hub is asked to append, at C
    speed on the common batch (its types once each; the sizes summed, and looked at one by
    one only when the whole batch is over ``limit``): the hub's hot path."""
    for event_type in set(map(itemgetter(0), events)):
        check_event_type(event_type)
    if sum(map(len, map(itemgetter(2), events))) + sum(map(len, map(itemgetter(3), events))) > (
        limit
    ):
        for event in events:
            check_encoded(event, limit)
