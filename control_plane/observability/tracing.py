"""Optional OpenTelemetry spans: one per job command (socket → controller → job actor, with
a ``job.paused`` event when the job held) and one per batch the hub appends.

Nothing here imports OpenTelemetry, or costs more than a check of a module flag, unless it
is installed *and* configured by its usual environment variables (``OTEL_TRACES_EXPORTER``,
``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``); or unless a
process set its own tracer provider and called :func:`enable` (tests do, with the SDK's
in-memory exporter). Where no provider is set, one is made from the environment: the OTLP
exporter when ``opentelemetry-exporter-otlp`` is installed, ``console`` on request.
A command's context crosses to the controller (another Ray process) as a W3C
``traceparent`` carrier (:func:`carrier`, :func:`span` with ``parent``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator, Mapping
from typing import Any

logger = logging.getLogger(__name__)

ENV_VARS = (
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
)
SERVICE = "control-plane"

_tracer: Any = None
_checked = False


def configured() -> bool:
    """Whether the environment asks for traces."""
    if os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    exporter = os.environ.get("OTEL_TRACES_EXPORTER", "")
    return exporter != "none" and any(os.environ.get(v) for v in ENV_VARS)


def _tracer_or_none() -> Any:
    global _tracer, _checked
    if not _checked:
        _checked = True
        if configured():
            enable()
    return _tracer


def enable(install_provider: bool = True) -> bool:
    """Start tracing in this process (once the environment asks for it, the first span
    does this). False when OpenTelemetry is not installed."""
    global _tracer, _checked
    _checked = True
    try:
        from opentelemetry import trace
    except ImportError:
        return False
    if install_provider and type(trace.get_tracer_provider()).__name__ == "ProxyTracerProvider":
        _install_provider()
    _tracer = trace.get_tracer("control_plane")
    return True


def disable() -> None:
    global _tracer, _checked
    _tracer, _checked = None, True


def _install_provider() -> None:
    """A provider from the environment, as OpenTelemetry's own auto-configuration would."""
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    except ImportError:
        return  # the API without the SDK: spans are no-ops
    service = os.environ.get("OTEL_SERVICE_NAME", SERVICE)
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    kind = os.environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",")[0].strip()
    exporter: Any = None
    if kind == "console":
        exporter = ConsoleSpanExporter()
    else:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            try:
                from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                    OTLPSpanExporter,
                )
            except ImportError:
                logger.warning("OTEL_* is set but no OTLP exporter is installed: no traces")
                return
        exporter = OTLPSpanExporter()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)


def active() -> bool:
    return _tracer_or_none() is not None


@contextlib.contextmanager
def span(name: str, parent: Mapping[str, str] | None = None, **attributes: Any) -> Iterator[Any]:
    """A span around the block (None when tracing is off); ``parent`` is a carrier from
    another process."""
    tracer = _tracer_or_none()
    if tracer is None:
        yield None
        return
    context = None
    if parent:
        from opentelemetry.propagate import extract

        context = extract(dict(parent))
    attrs = {k: v for k, v in attributes.items() if v is not None}
    with tracer.start_as_current_span(name, context=context, attributes=attrs) as current:
        yield current


def carrier() -> dict[str, str] | None:
    """The current span's context as W3C headers, for a call to another process."""
    if _tracer_or_none() is None:
        return None
    from opentelemetry.propagate import inject

    headers: dict[str, str] = {}
    inject(headers)
    return headers or None


def event(current: Any, name: str, **attributes: Any) -> None:
    if current is not None:
        current.add_event(name, {k: v for k, v in attributes.items() if v is not None})


def now_ns() -> int:
    return time.time_ns()


def record(name: str, start_ns: int, **attributes: Any) -> None:
    """A span that began at ``start_ns`` and ends now (a batch the hub has appended)."""
    tracer = _tracer_or_none()
    if tracer is None:
        return
    current = tracer.start_span(name, start_time=start_ns, attributes=attributes)
    current.end()
