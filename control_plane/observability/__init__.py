"""What people who run Ray already watch: metrics in Ray's own system (``metrics.py``),
structured log lines (``logs.py``) and optional OpenTelemetry spans (``tracing.py``)."""
