"""How a stack's warnings and errors stay one short line, whatever a compose file holds."""

from __future__ import annotations

from typing import Any

from p2pswarm.cluster.checks import SpecError

MAX_QUOTE = 60
"""Characters of a document value quoted in a warning or an error (a value can be megabytes)."""
MAX_MESSAGE = 300
"""Characters of one warning or error line at most, whatever the values it names."""


class StackError(Exception):
    """A compose file that cannot be deployed (one line, cut to ``MAX_MESSAGE`` characters)."""

    def __init__(self, message: str) -> None:
        super().__init__(cut(message, MAX_MESSAGE))


def cut(text: str, limit: int) -> str:
    """``text`` on one line, at most ``limit`` characters (a cut one ends in '...')."""
    text = " ".join(text.splitlines())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def quote(value: Any) -> str:
    """``repr(value)`` for a message, at most ``MAX_QUOTE`` characters (built from a bounded part only)."""
    if isinstance(value, str):
        return cut(repr(value[:MAX_QUOTE]), MAX_QUOTE)
    if isinstance(value, (dict, list)):
        return f"<a {type(value).__name__} of {len(value)} entries>"
    return cut(repr(value), MAX_QUOTE)


def mapping(value: Any, what: str) -> dict:
    """A compose section that must be a mapping (absent: empty)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SpecError(f"{what}: must be a mapping")
    return value
