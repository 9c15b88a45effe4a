"""Structured log lines: one per job command and one per socket close, as JSON on request.

``control-plane serve --log-format json`` (``cli.py``, the only place that configures the
driver's logging) writes every line as one JSON object, and sets ``CONTROL_PLANE_LOG_FORMAT``
so that the control plane's actors do the same: the hub, the controller and the gateway
replicas run in Ray worker processes, whose stderr goes to Ray's log files (``worker-*.err``
in the session's ``logs`` folder) and, with ``log_to_driver``, to the driver. The variable
reaches them through the process environment of a Ray that the CLI starts, and through the
actors' ``runtime_env`` on a cluster (:func:`actor_env`).

A line's fields are the ``fields`` of its record (:func:`log_event`): ``event``, ``job_id``,
``client_id``, ``outcome`` and the like. Never a token: the gateway logs client ids, never
a header, a cookie or a query string.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

ENV_FORMAT = "CONTROL_PLANE_LOG_FORMAT"
FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Passed on to the actors' processes: the log format, the metrics switch, OpenTelemetry's.
FORWARDED_PREFIXES = (ENV_FORMAT, "CONTROL_PLANE_METRICS", "OTEL_")


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, and the record's ``fields``."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update(fields)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def log_event(logger: logging.Logger, event: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log one structured line: ``event key=value ...`` as text, the fields as JSON."""
    if not logger.isEnabledFor(level):
        return
    text = " ".join(f"{k}={v}" for k, v in fields.items())
    logger.log(level, "%s %s", event, text, extra={"fields": {"event": event, **fields}})


def formatter(fmt: str) -> logging.Formatter:
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r}: one of {', '.join(FORMATS)}")
    return JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT)


def configure(fmt: str = "text", level: int = logging.INFO) -> None:
    """The driver's logging (the CLI calls this); the actors it starts follow ``fmt``."""
    handler = logging.StreamHandler()
    handler.setFormatter(formatter(fmt))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    if fmt == "json":
        os.environ[ENV_FORMAT] = fmt  # passed on to the actors (text is their default)


def configure_actor() -> None:
    """In an actor's process: with ``CONTROL_PLANE_LOG_FORMAT=json``, the control plane's
    loggers write JSON lines to stderr (Ray's log file of the worker); otherwise Ray's own
    logging setup stays as it is."""
    if os.environ.get(ENV_FORMAT) != "json":
        return
    root = logging.getLogger("control_plane")
    if any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    root.propagate = False


def actor_env() -> dict[str, Any]:
    """Actor options that pass this process's log format, metrics switch and OpenTelemetry
    settings to an actor (empty when none is set, so actors keep sharing workers' envs)."""
    env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_PREFIXES)}
    return {"runtime_env": {"env_vars": env}} if env else {}
