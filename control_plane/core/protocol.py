"""The wire protocol: every frame is one JSON object.

Server to client, the envelope::

    {"type": "job.progress", "timestamp": "2026-01-15T10:30:00.123Z", "seq": 1042,
     "channel": "job:7f3a", "data": {"job_id": "7f3a", "status": "running", "progress": 75.0}}

Client to server: ``subscribe``, ``unsubscribe``, ``job.pause|resume|cancel|suspend``, ``ping`` and
``pong``, a discriminated union on ``type`` with ``extra="forbid"`` so that a wrong field is
named in the ``error`` reply. It imports nothing of ours but the leaves ``jsonwire`` and
``limits``.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from enum import IntEnum
from types import MappingProxyType
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
    field_validator,
)

from control_plane.core.jsonwire import dumps
from control_plane.core.limits import DEFAULT_MAX_DEPTH, nesting_depth, request_id_problem

# --- event types -------------------------------------------------------------------------

# The job state each lifecycle event reports; the one table of it. It gives the ``status`` a
# job event carries when its sender names none, the state the controller's registry moves a
# job to (``registry``), and, read backwards, the event a job emits on reaching a terminal
# state (``jobs.context``). Values are ``JobState`` values (``jobs.lifecycle``), as strings
# because ``jobs`` imports this module, not the other way round; the registry turns them into
# ``JobState`` at import and tests/unit/test_protocol_facts.py checks them.
STATE_BY_EVENT: Mapping[str, str] = MappingProxyType(
    {
        "job.created": "pending",
        "job.started": "running",
        "job.paused": "paused",
        "job.resumed": "running",
        "job.completed": "completed",
        "job.failed": "failed",
        "job.cancelled": "cancelled",
        # the controller starts a new actor (its old one died); job.started follows
        "job.restarted": "pending",
        "job.suspended": "suspended",
    }
)
# What the ``jobs`` channel carries: every job's lifecycle (the events that set its state),
# not its progress or agents.
LIFECYCLE_TYPES = frozenset(STATE_BY_EVENT)
JOB_EVENT_TYPES = LIFECYCLE_TYPES | {"job.progress"}
# The lifecycle events of terminal states (``JobState.terminal``; checked by the same test).
TERMINAL_EVENT_TYPES = frozenset({"job.completed", "job.failed", "job.cancelled"})

SYSTEM_CHANNEL = "system"
JOBS_CHANNEL = "jobs"
ALL_CHANNELS = "*"
AUDIT_CHANNEL = "audit"  # every command and refusal; admins only
JOB_CHANNEL_PREFIX = "job:"

_TYPE_RE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
_JOB_ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


# The last millisecond formatted and its text, one tuple so that threads read a matching pair.
_last_ms: tuple[int, str] = (-1, "")
_last_second: tuple[int, str] = (-1, "")


def utc_now_iso() -> str:
    """ISO-8601 UTC with milliseconds and a ``Z``, as the contract shows.

    Formatted once a millisecond: a job reporting progress flat out asks many times in one.
    """
    ms = time.time_ns() // 1_000_000
    last = _last_ms
    if last[0] == ms:
        return last[1]
    return _format_ms(ms)


def _format_ms(ms: int) -> str:
    global _last_ms, _last_second
    second, milli = divmod(ms, 1000)
    last = _last_second
    if last[0] != second:
        last = _last_second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    text = f"{last[1]}.{milli:03d}Z"
    _last_ms = (ms, text)
    return text


def job_channel(job_id: str) -> str:
    return JOB_CHANNEL_PREFIX + job_id


def channel_for(event_type: str, data: dict[str, Any]) -> str:
    """The one channel an event lives on: ``job:<id>`` for anything about a job."""
    if event_type.startswith("system."):
        return SYSTEM_CHANNEL
    job_id = data.get("job_id")
    if job_id:
        return job_channel(str(job_id))
    return SYSTEM_CHANNEL


def is_valid_channel(channel: str) -> bool:
    if channel in (SYSTEM_CHANNEL, JOBS_CHANNEL, ALL_CHANNELS, AUDIT_CHANNEL):
        return True
    return channel.startswith(JOB_CHANNEL_PREFIX) and bool(
        _JOB_ID_RE.match(channel[len(JOB_CHANNEL_PREFIX) :])
    )


# --- who receives an event -----------------------------------------------------------------
#
# The channel rule, stated once here and followed by the hub's reader filter
# (``hub_log.taker``), the gateway's subscription index (``routing``), the replay seam
# (``seam``), the Python client and, ported, the JS client (``cp-client.js``, checked against
# this by tests/unit/test_protocol_facts.py). Broadcasts and ``client:<id>`` targets are
# routing, not channels: ``hub_log`` and ``routing`` handle those before asking this.

_LIFECYCLE_RECEIVERS = (ALL_CHANNELS, JOBS_CHANNEL)
_ANY_RECEIVERS = (ALL_CHANNELS,)
# Every answer :func:`receivers_of_type` can give, so that a filter can tell once, not per
# entry, whether its channels take every type (``*``) or none by type (``job:<id>`` only).
TYPE_RECEIVER_SETS: tuple[tuple[str, ...], ...] = (_LIFECYCLE_RECEIVERS, _ANY_RECEIVERS)


def receivers_of_type(event_type: str) -> tuple[str, ...]:
    """The subscription channels that receive every event of ``event_type``, whatever channel
    it lives on: ``*`` all of them, ``jobs`` the lifecycle events of every job.

    Split from :func:`receiving_channels` because it depends on the type alone, so a filter
    that scans many entries (the hub's) can answer it once per type, not once per entry.
    """
    return _LIFECYCLE_RECEIVERS if event_type in LIFECYCLE_TYPES else _ANY_RECEIVERS


def receiving_channels(channel: str, event_type: str) -> tuple[str, ...]:
    """The subscription channels that receive an event on ``channel`` of ``event_type``: the
    channel itself (``job:<id>``, ``system``), then :func:`receivers_of_type`."""
    return (channel, *receivers_of_type(event_type))


# --- close codes ---------------------------------------------------------------------------


class CloseCode(IntEnum):
    """Why the server closed a socket; the one table the gateway and both clients use."""

    NORMAL = 1000  # closed on purpose (a socket replaced by a newer one with its client id)
    TOO_BIG = 1009  # a frame over the limit: do not send it again
    SERVER_ERROR = 1011  # a server error, or no answer to RFC 6455 pings in time
    RESTARTING = 1012  # the gateway replica is restarting, or lost the hub's history
    NO_SUBSCRIBE = 4001  # no subscribe before the deadline
    SLOW_CONSUMER = 4008  # the client did not read: its send queue overflowed
    BAD_REQUEST = 4400  # the handshake asked for something invalid (a malformed client_id)
    TOO_MANY_CONNECTIONS = 4029  # over the sockets of the replica or of the principal: later
    UNAUTHORIZED = 4401  # missing, wrong or expired token
    FORBIDDEN_ORIGIN = 4403  # a browser page from another origin

    @property
    def retry(self) -> bool:
        """Whether a client should reconnect (and resume with ``since``) after this close."""
        return self not in _NO_RETRY


_NO_RETRY = frozenset(
    {CloseCode.TOO_BIG, CloseCode.BAD_REQUEST, CloseCode.UNAUTHORIZED, CloseCode.FORBIDDEN_ORIGIN}
)

# Closes that refuse the client's credentials (its token, its page's origin): a client
# reports them as an auth error, not as a lost connection.
REFUSAL_CODES = frozenset({CloseCode.UNAUTHORIZED, CloseCode.FORBIDDEN_ORIGIN})
# RFC 6455's code for a connection that ended without a close frame: a lost network, a
# killed process. A client library reports it; it is never sent.
NETWORK_LOSS = 1006


# RFC 6455's codes for a peer that broke the protocol: the same client would break it again.
PROTOCOL_ERRORS = frozenset({1002, 1003, 1007, 1008})


def reconnects_after(code: int | None) -> bool:
    """Whether a client reconnects (and resumes with ``since``) after a close with ``code``.

    Yes after a lost network (1006, or ``None``: the connection was never made), after each
    code of :class:`CloseCode` whose ``retry`` says so, and after a code the gateway does not
    send itself (1001 or 1013 from a proxy, 4000 from an older gateway): the gateway behind
    it may well take the client back. No after the others of :class:`CloseCode`, after an
    RFC 6455 protocol error and after any 44xx (refusals): coming back as it is would end
    the same way.
    """
    if code is None or code == NETWORK_LOSS:
        return True
    if code in PROTOCOL_ERRORS or 4400 <= code < 4500:
        return False
    try:
        return CloseCode(code).retry
    except ValueError:
        return True


# --- event data models ---------------------------------------------------------------------


class _EventData(BaseModel):
    model_config = ConfigDict(extra="allow")


class JobEventData(_EventData):
    job_id: str
    status: str


class JobProgressData(JobEventData):
    progress: float = Field(ge=0, le=100)
    message: str | None = None


class JobCompletedData(JobEventData):
    result: Any = None


class JobFailedData(JobEventData):
    error: str


class JobCancelledData(JobEventData):
    forced: bool = False


class JobRestartedData(JobEventData):
    attempt: int = Field(ge=1)  # 1 for the first restart
    reason: str


class AgentStartedData(JobEventData):
    agent_id: str
    name: str


class AgentOutputData(JobEventData):
    agent_id: str
    output: str


class AgentCompletedData(JobEventData):
    agent_id: str


class AgentFailedData(JobEventData):
    agent_id: str
    error: str


class SystemMetricsData(_EventData):
    nodes_alive: int
    cpu_total: float
    cpu_used: float
    memory_total: float
    memory_used: float
    jobs: dict[str, int]


class SystemAlertData(_EventData):
    level: Literal["info", "warning", "error", "critical"]
    message: str


EVENT_DATA_MODELS: dict[str, type[_EventData]] = {
    "job.created": JobEventData,
    "job.started": JobEventData,
    "job.progress": JobProgressData,
    "job.completed": JobCompletedData,
    "job.failed": JobFailedData,
    "job.paused": JobEventData,
    "job.resumed": JobEventData,
    "job.cancelled": JobCancelledData,
    "job.restarted": JobRestartedData,
    "job.suspended": JobEventData,
    "agent.started": AgentStartedData,
    "agent.output": AgentOutputData,
    "agent.completed": AgentCompletedData,
    "agent.failed": AgentFailedData,
    "system.metrics": SystemMetricsData,
    "system.alert": SystemAlertData,
}


class Event(BaseModel):
    """One server-to-client frame. ``seq`` and ``channel`` are set on every hub event, which
    also carries its ``data`` fields at the top level (the seed's client reads them there),
    so keys beyond the envelope's are allowed."""

    model_config = ConfigDict(extra="allow")

    type: str
    timestamp: str
    seq: int | None = None
    channel: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)


_RESERVED_KEYS = ("type", "timestamp", "data")


def normalize_event(message: dict[str, Any]) -> dict[str, Any]:
    """Turn the seed's flat form into the envelope (without ``seq``/``channel``).

    ``{'type': 'job.progress', 'job_id': j, 'progress': 75}`` becomes
    ``{'type': 'job.progress', 'timestamp': ..., 'data': {'job_id': j, 'progress': 75.0}}``.
    Known event types are validated against their data model; an unknown type is accepted
    when it is dotted lowercase (``app.note``), so users can add their own.
    """
    if not isinstance(message, dict):
        raise ValueError(f"an event must be a dict, not {type(message).__name__}")
    event_type = message.get("type")
    if not isinstance(event_type, str) or not _TYPE_RE.match(event_type):
        raise ValueError(f"an event needs a dotted lowercase 'type', got {event_type!r}")
    raw_data = message.get("data")
    if raw_data is not None and not isinstance(raw_data, dict):
        raise ValueError(f"an event's 'data' must be an object, not {type(raw_data).__name__}")
    data = dict(raw_data or {})
    for key, value in message.items():
        if key not in _RESERVED_KEYS:
            data[key] = value
    model = EVENT_DATA_MODELS.get(event_type)
    if model is not None:
        if issubclass(model, JobEventData):
            data.setdefault("status", status_for(event_type))
        try:
            data = model.model_validate(data).model_dump(exclude_none=False)
        except ValidationError as e:
            raise ValueError(f"invalid data for {event_type}: {_first_error(e)}") from e
    timestamp = message.get("timestamp")
    if not isinstance(timestamp, str):
        timestamp = utc_now_iso()
    return {"type": event_type, "timestamp": timestamp, "data": data}


def status_for(event_type: str) -> str:
    """The ``status`` a job or agent event carries when its sender names none: the state its
    type reports (:data:`STATE_BY_EVENT`), else ``running``, as progress and agent events
    come from a running body."""
    return STATE_BY_EVENT.get(event_type, "running")


def make_event(event_type: str, data: dict[str, Any]) -> dict[str, Any]:
    """A trusted envelope built on the hot path (no validation)."""
    return {"type": event_type, "timestamp": utc_now_iso(), "data": data}


def encode(frame: dict[str, Any]) -> str:
    """A reply frame's text, in the one wire encoding the hub's events use too."""
    return dumps(frame)


# --- replies -------------------------------------------------------------------------------

RequestId = str | int | None


def ack(request_id: RequestId, **data: Any) -> dict[str, Any]:
    return {"type": "ack", "timestamp": utc_now_iso(), "data": {"request_id": request_id, **data}}


def error_reply(request_id: RequestId, code: str, message: str) -> dict[str, Any]:
    return {
        "type": "error",
        "timestamp": utc_now_iso(),
        "data": {"request_id": request_id, "code": code, "message": message},
    }


def server_frame(frame_type: str, **data: Any) -> dict[str, Any]:
    return {"type": frame_type, "timestamp": utc_now_iso(), "data": data}


# --- client messages -----------------------------------------------------------------------


class _ClientMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: StrictStr | StrictInt | None = Field(default=None, description="echoed as request_id")


class Subscribe(_ClientMessage):
    type: Literal["subscribe"]
    channels: list[str] = Field(min_length=1, max_length=1000)
    # An integer, or with a sharded hub one seq per shard: {"0": 120, "1": 95}
    # (``core/shards.py``).
    since: NonNegativeInt | dict[str, NonNegativeInt] | None = None
    epoch: str | None = Field(default=None, max_length=256)

    @field_validator("since")
    @classmethod
    def _since_names_shards(cls, since: int | dict[str, int] | None) -> object:
        if isinstance(since, dict) and not (
            len(since) <= 64 and all(k.isdigit() and len(k) <= 2 for k in since)
        ):
            raise ValueError('a per-shard since is {"<shard>": <seq>, ...}')
        return since

    @field_validator("channels")
    @classmethod
    def _channels_are_known(cls, channels: list[str]) -> list[str]:
        bad = [c for c in channels if not is_valid_channel(c)]
        if bad:
            raise ValueError(
                f"unknown channel {bad[0]!r}: use 'job:<id>', 'jobs', 'system', 'audit' or '*'"
            )
        return channels


class Unsubscribe(_ClientMessage):
    type: Literal["unsubscribe"]
    channels: list[str] = Field(min_length=1, max_length=1000)


class JobCommand(_ClientMessage):
    type: Literal["job.pause", "job.resume", "job.cancel", "job.suspend"]
    job_id: str = Field(min_length=1, max_length=128)

    @property
    def command(self) -> str:
        return self.type.removeprefix("job.")


class Ping(_ClientMessage):
    type: Literal["ping"]


class Auth(_ClientMessage):
    """A fresh token for an open socket (before the old one expires): same subject only."""

    type: Literal["auth"]
    token: str = Field(min_length=1, max_length=8192, repr=False)


class Broadcast(_ClientMessage):
    """An event to every client (admins only): ``{"type": "app.note", "data": {...}}``."""

    type: Literal["broadcast"]
    event: dict[str, Any]


class Pong(_ClientMessage):
    type: Literal["pong"]


ClientMessage = Annotated[
    Subscribe | Unsubscribe | JobCommand | Ping | Pong | Auth | Broadcast,
    Field(discriminator="type"),
]
client_message_adapter: TypeAdapter[ClientMessage] = TypeAdapter(ClientMessage)
CLIENT_MESSAGE_TYPES = (
    "subscribe",
    "unsubscribe",
    "job.pause",
    "job.resume",
    "job.cancel",
    "job.suspend",
    "ping",
    "auth",
    "broadcast",
)


class BadFrame(Exception):
    """A client frame we reject; ``code`` goes on the wire, ``request_id`` if we could read it."""

    def __init__(self, code: str, message: str, request_id: RequestId = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id


def parse_client_message(text: str | bytes, max_depth: int = DEFAULT_MAX_DEPTH) -> ClientMessage:
    """Parse one client frame or raise :class:`BadFrame` naming what is wrong."""
    if isinstance(text, bytes):
        try:
            text = text.decode()
        except UnicodeDecodeError as e:
            raise BadFrame("invalid_json", f"frame is not valid UTF-8: {e}") from e
    depth = nesting_depth(text, max_depth)
    if depth > max_depth:
        raise BadFrame("too_deep", f"JSON nested over {max_depth} levels deep")
    try:
        raw = json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise BadFrame("invalid_json", f"frame is not valid JSON: {e}") from e
    if not isinstance(raw, dict):
        raise BadFrame("invalid_message", "frame must be a JSON object")
    raw_id = raw.get("id")
    request_id = raw_id if isinstance(raw_id, str | int) and not isinstance(raw_id, bool) else None
    if request_id is not None and (why := request_id_problem(request_id)) is not None:
        raise BadFrame("invalid_message", why)
    msg_type = raw.get("type")
    if msg_type is None:
        raise BadFrame("missing_type", "frame has no 'type'", request_id)
    if msg_type not in CLIENT_MESSAGE_TYPES and msg_type != "pong":
        raise BadFrame(
            "unknown_type",
            f"unknown message type {msg_type!r}; expected one of {', '.join(CLIENT_MESSAGE_TYPES)}",
            request_id,
        )
    try:
        return client_message_adapter.validate_python(raw)
    except ValidationError as e:
        raise BadFrame("invalid_message", _first_error(e), request_id) from e


def _first_error(e: ValidationError) -> str:
    err = e.errors()[0]
    # The discriminated union puts the tag first in loc; drop it for a readable path.
    parts = [str(p) for p in err["loc"]]
    if parts and parts[0] in (*CLIENT_MESSAGE_TYPES, "pong"):
        parts = parts[1:]
    if parts[:1] == ["since"]:  # an integer or a per-shard mapping: name the field only
        parts = parts[:1]
    loc = ".".join(parts)
    if parts and parts[0] == "id":
        return "id must be a string or an integer"
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        return f"unexpected field {loc!r}"
    if err["type"] == "missing":
        return f"missing field {loc!r}"
    return f"{loc}: {msg}" if loc else msg
