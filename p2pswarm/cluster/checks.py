"""Field checkers shared by the service spec and the cluster commands.

Every checker either returns the (normalised) value or raises :class:`SpecError`
whose message is one line: the field, what is allowed, and what was given.  The
CLI prints that line as is, so it must read well on its own.
"""

from __future__ import annotations

import math
import re
from typing import Any, Iterable


class SpecError(ValueError):
    """A service spec or cluster command field is invalid (one line, names the field)."""

    def under(self, prefix: str) -> "SpecError":
        """The same error with its field named inside ``prefix`` (``delay`` -> ``restart.delay``)."""
        return SpecError(f"{prefix}.{self}")


def shown(value: Any) -> str:
    """A short, one-line rendering of a bad value for error messages."""
    text = repr(value).replace("\n", " ")
    return text if len(text) <= 40 else text[:37] + "..."


def fail(field: str, allowed: str, value: Any) -> SpecError:
    return SpecError(f"{field}: {allowed} (got {shown(value)})")


def integer(field: str, value: Any, lo: int, hi: int) -> int:
    if type(value) is not int or not lo <= value <= hi:
        raise fail(field, f"must be an integer {lo}..{hi}", value)
    return value


def number(field: str, value: Any, lo: float, hi: float, unit: str = "", what: str = "") -> float:
    if type(value) not in (int, float) or not math.isfinite(value) or not lo <= value <= hi:
        raise fail(field, what or f"must be a number {lo:g}..{hi:g}{unit}", value)
    return float(value)


def flag(field: str, value: Any) -> bool:
    if type(value) is not bool:
        raise fail(field, "must be true or false", value)
    return value


def choice(field: str, value: Any, allowed: Iterable[str]) -> str:
    allowed = tuple(allowed)
    if value not in allowed or type(value) is not str:
        raise fail(field, "must be one of " + ", ".join(allowed), value)
    return value


def text(field: str, value: Any, max_len: int, pattern: re.Pattern | None = None, what: str = "") -> str:
    if type(value) is not str or not 1 <= len(value) <= max_len or "\x00" in value:
        raise fail(field, f"must be a non-empty string of at most {max_len} characters", value)
    if pattern is not None and not pattern.fullmatch(value):
        raise fail(field, what or f"must match {pattern.pattern}", value)
    return value


def strings(field: str, value: Any, max_items: int, max_len: int, allow_empty: bool = True) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or len(value) > max_items:
        raise fail(field, f"must be a list of at most {max_items} strings", value)
    for item in value:
        if type(item) is not str or len(item) > max_len or "\x00" in item or (not item and not allow_empty):
            raise fail(field, f"items must be strings of at most {max_len} characters", item)
    return tuple(value)


def pairs(field: str, value: Any, max_items: int, key: re.Pattern, key_what: str,
          max_len: int) -> tuple[tuple[str, str], ...]:
    """A mapping of str -> str, given as a dict or as (key, value) pairs; returned sorted by key."""
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, (list, tuple)) and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in value):
        items = [tuple(p) for p in value]
    else:
        raise fail(field, "must be a mapping of names to strings", value)
    if len(items) > max_items:
        raise fail(field, f"at most {max_items} entries are allowed", len(items))
    seen: set[str] = set()
    for k, v in items:
        if type(k) is not str or not key.fullmatch(k):
            raise fail(field, key_what, k)
        if k in seen:
            raise fail(field, "each name may appear once", k)
        seen.add(k)
        if type(v) is not str or len(v) > max_len or "\x00" in v:
            raise fail(f"{field}.{k}", f"must be a string of at most {max_len} characters", v)
    return tuple(sorted(items))


LABEL_KEY = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_.-]{0,126}[A-Za-z0-9])?")
LABEL_KEY_WHAT = "label names are letters, digits, '_', '.', '-' (at most 128, alphanumeric at both ends)"


# Predicates, for the replicated records (security, access) that refuse a command with a reason of their own
# instead of raising: the same order as the checkers above (the value, then its bounds), minus the field name.

def is_bytes(value: Any, hi: int, lo: int = 1) -> bool:
    """A byte string of ``lo``..``hi`` bytes."""
    return type(value) is bytes and lo <= len(value) <= hi


def is_text(value: Any, hi: int, lo: int = 1) -> bool:
    """A string of ``lo``..``hi`` characters."""
    return type(value) is str and lo <= len(value) <= hi


def is_count(value: Any) -> bool:
    """An integer >= 0 (a generation, a version)."""
    return type(value) is int and value >= 0


def is_number(value: Any) -> bool:
    """An int or a float that is not NaN (a time)."""
    return type(value) in (int, float) and value == value


def cut_text(value: Any, hi: int) -> str | None:
    """A string cut to ``hi`` characters (a free-text field kept, never refused); None for a non-string."""
    return value[:hi] if type(value) is str else None
