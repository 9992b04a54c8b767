"""The leader scheduler loop's timing (the presets: :mod:`p2pswarm.node.presets`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SchedulerConfig:
    interval: float = 0.1
    """Seconds between checks for a change (a check that finds none costs a few comparisons)."""
    resync: float = 5.0
    """Seconds after which a round runs even if nothing seems to have changed."""
    backoff: float = 1.0
    """Seconds before a failed service (or a failed round) is tried again; doubled per consecutive failure
    up to ``backoff_max``: wait = min(backoff_max, backoff x 2^(failures - 1)).  Re-planning at once would
    repeat the same failure every ``interval`` and keep the leader's CPU busy."""
    backoff_max: float = 30.0
    """Longest wait between two attempts (a persistent failure is retried this often; warned about once)."""
