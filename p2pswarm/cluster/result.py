"""What applying a cluster command answers (pure): a :class:`Result`, or a :class:`Rejected` raised inside a
handler.  Its own module so that the handlers kept beside the state machine (:mod:`.objects`) answer
the same way as those in :mod:`.state`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

STALE = "stale decision"
"""Every refusal of a decision planned on outdated state says this: the leader plans again from the
newer state, so such a refusal is routine, not a scheduling failure."""


@dataclass(frozen=True, slots=True)
class Result:
    ok: bool
    error: str = ""
    value: Any = None
    """msgpack-able: a retried command gets the same value back, also after a restore."""

    @property
    def stale(self) -> bool:
        """Refused only because the decision was planned on outdated state (see ``STALE``)."""
        reasons = (self.value or {}).get("rejected") if isinstance(self.value, dict) else None
        return not self.ok and all(STALE in r for r in (reasons or [self.error]))


class Rejected(Exception):
    """A refusal inside a handler, raised before anything was changed."""
