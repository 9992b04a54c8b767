"""Times as ``--since`` and ``--until`` take them, like Docker's (pure: ``now`` is passed in).

``2026-12-06T15:04:05Z`` (RFC 3339, any offset, fractions allowed; a bare date is midnight UTC),
``1765033445`` or ``1765033445.5`` (unix seconds), or a duration back from now: ``90s``, ``10m``,
``1h30m``, ``2d``.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone

UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
DURATION = re.compile(r"(?:\d+(?:\.\d+)?[smhd])+")
PART = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
UNIX = re.compile(r"\d{1,12}(?:\.\d+)?")
HINT = "use RFC 3339 (2026-12-06T15:04:05Z), unix seconds, or a duration back from now (10m, 1h30m, 2d)"


def parse_time(text: str, now: float) -> float:
    """Unix seconds of ``text``; ValueError (one line) when it is none of the forms above."""
    value = text.strip()
    if DURATION.fullmatch(value):
        return now - sum(float(n) * UNITS[unit] for n, unit in PART.findall(value))
    if UNIX.fullmatch(value):
        return float(value)
    stamp = value[:-1] + "+00:00" if value[-1:] in ("Z", "z") else value
    try:
        parsed = datetime.fromisoformat(stamp.replace(" ", "T", 1) if "T" not in stamp.upper() else stamp)
    except ValueError:
        raise ValueError(f"{text[:40]!r} is not a time: {HINT}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()
