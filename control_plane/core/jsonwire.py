"""The one JSON encoding of the wire: compact, ASCII-only, what JSON cannot hold as ``str``,
and no NaN or ±Infinity (``ValueError``): ``JSON.parse`` in a browser refuses them.

Hub events (:mod:`control_plane.core.encoding`) and the gateway's own replies
(:func:`control_plane.core.protocol.encode`) both write frames with :func:`dumps`, so a
client sees one encoding whichever path a frame took. Imports nothing else of ours.
"""

from __future__ import annotations

import json
from typing import Any

_ENCODER = json.JSONEncoder(separators=(",", ":"), default=str, allow_nan=False)


def dumps(value: Any) -> str:
    """Compact JSON, as the hub sends it; what JSON cannot hold becomes ``str(value)``, but
    a non-finite float raises ``ValueError``."""
    return _ENCODER.encode(value)
