"""The presets: one named bundle of every layer's settings (``--preset lan|wan|local|test``).

A :class:`Preset` holds the settings of each layer a node runs: SWIM membership, the Raft core,
the Raft driver, the autopilot, the leader's scheduler and the workers' assignment protocol.  It imports only the config
dataclasses (never the node), so the CLI, the simulator and the labs may read it too.

``wan`` is derived from ``lan`` the way memberlist derives ``DefaultWANConfig`` from
``DefaultLANConfig``: start from the LAN settings and override what longer round trips need.
No single factor maps one to the other (SWIM's probe interval grows 6×, its timeout 7.5×, Raft's
election timeout 50/3×, the autopilot's interval 4×, the scheduler's backoff 2×), so each override
is written out rather than produced by a formula that would change today's numbers.  ``local``
and ``test`` are derived from the dataclass defaults the same way.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from p2pswarm.assignments.config import AssignmentsConfig
from p2pswarm.consensus.config import AutopilotConfig, DriverConfig, RaftConfig
from p2pswarm.membership.config import SwimConfig
from p2pswarm.scheduler.config import SchedulerConfig


@dataclass(frozen=True)
class Preset:
    """Every layer's settings under one name."""

    membership: SwimConfig = field(default_factory=SwimConfig)
    raft: RaftConfig = field(default_factory=RaftConfig)
    raft_driver: DriverConfig = field(default_factory=DriverConfig)
    autopilot: AutopilotConfig = field(default_factory=AutopilotConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    assignments: AssignmentsConfig = field(default_factory=AssignmentsConfig)

    def with_changes(self, **changes) -> "Preset":
        """A copy with some layers' settings changed: ``layer={field: value}`` or ``layer=Config(...)``."""
        out = {}
        for layer, change in changes.items():
            out[layer] = (dataclasses.replace(getattr(self, layer), **change) if isinstance(change, dict)
                          else change)
        return dataclasses.replace(self, **out)


LAN = Preset(
    # A LAN or one machine: SWIM detects a crash in about two seconds in a small cluster, more as the minimum
    # suspicion (log10 n seconds) grows: a median of ~3.9 s at 500 nodes and ~4.5 s at 2,000 in `sim cluster`
    # zone-outage.  Raft elections in the Raft paper's 150-300 ms range, so a failed leader is replaced in ~0.5 s.
    raft=RaftConfig(election_timeout=0.3, heartbeat_interval=0.05),
)
WAN = LAN.with_changes(
    # Links with tens to hundreds of milliseconds of latency: sparse probes and heartbeats,
    # patient suspicions, elections, writes and autopilot rounds.
    membership=dict(probe_interval=3.0, probe_timeout=1.5, suspicion_mult=6.0, gossip_interval=0.5,
                    gossip_fanout=4, push_pull_interval=60.0, reconnect_interval=30.0),
    raft=dict(election_timeout=5.0, heartbeat_interval=0.5, max_inflight=256),
    raft_driver=dict(write_timeout=30.0, retry_interval=5.0),
    autopilot=dict(stabilization_time=15.0, max_lag=1024, interval=2.0, last_contact_threshold=2.5),
    scheduler=dict(interval=0.5, resync=15.0, backoff=2.0, backoff_max=60.0),
)
LOCAL = Preset(
    # Many nodes on one busy host (lab clusters): a little more patience for a busy CPU.
    membership=SwimConfig(probe_interval=0.5, probe_timeout=0.3, suspicion_mult=3.0,
                          push_pull_interval=15.0, reconnect_interval=5.0),
    raft=RaftConfig(election_timeout=1.5, heartbeat_interval=0.15),
    raft_driver=DriverConfig(retry_interval=1.5),
    autopilot=AutopilotConfig(stabilization_time=5.0, interval=1.0, last_contact_threshold=1.0),
)
TEST = Preset(
    # Tests and simulation: fast and short-lived.
    membership=SwimConfig(probe_interval=0.2, probe_timeout=0.1, suspicion_mult=3.0, gossip_interval=0.05,
                          push_pull_interval=5.0, reconnect_interval=1.0, dead_reap_after=60.0,
                          left_reap_after=30.0, gossip_to_dead=5.0, join_retry_initial=0.1,
                          join_retry_max=1.0),
    raft=RaftConfig(election_timeout=0.3, heartbeat_interval=0.05, max_inflight=8,
                    max_batch_entries=16, max_batch_bytes=64 * 1024),
    raft_driver=DriverConfig(snapshot_every=64, write_timeout=4.0, retry_interval=0.3),
    autopilot=AutopilotConfig(stabilization_time=1.0, max_lag=16, interval=0.2, last_contact_threshold=0.25),
    scheduler=SchedulerConfig(interval=0.05, resync=2.0, backoff=0.5, backoff_max=5.0),
)

PRESETS: dict[str, Preset] = {"lan": LAN, "wan": WAN, "local": LOCAL, "test": TEST}
"""Every preset by name, in the order the help text lists them."""


def preset(name: str) -> Preset:
    """The preset called ``name``; a one-line ValueError naming the choices otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None
