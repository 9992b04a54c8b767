"""SWIM + Lifeguard timing and size settings (the presets: :mod:`p2pswarm.node.presets`).

Every field is in seconds or counts. ``n`` below is the number of members this
node currently knows as alive or suspect (itself included).

Formulas (as implemented in :mod:`p2pswarm.membership.swim`):

* probe period       = probe_interval × (1 + health)        (Lifeguard LHM; health 0..health_max)
* direct ack wait    = probe_timeout  × (1 + health)
* a helper's nack    = 0.8 × probe_timeout after the PingReq (not scaled: see swim.NACK_FRACTION)
* suspicion min      = suspicion_mult × max(1, log10 n) × probe_interval
* suspicion max      = suspicion_max_mult × suspicion min   (Lifeguard only; plain SWIM uses min)
* suspicion timeout  = max(min, max − (max − min) × log(C + 1) / log(K + 1))
                       C = independent confirmations so far, K = expected confirmations
                         = suspicion_confirmations, or 0 when n − 2 < that
* retransmit limit   = retransmit_mult × ceil(log10(n + 1))  sends of each piece of news,
                       the first gossip_sends of them on dedicated gossip messages
* push/pull period   = push_pull_interval × scale,  reconnect period = reconnect_interval × scale,
                       scale = 1 for n ≤ 32, else ceil(log2 n − log2 32) + 1
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass


@dataclass(frozen=True)
class SwimConfig:
    probe_interval: float = 0.5
    """Seconds between the starts of two probes (one SWIM protocol period)."""
    probe_timeout: float = 0.2
    """Seconds to wait for a direct ack before asking others to probe (indirect probe)."""
    indirect_checks: int = 3
    """k: members asked to probe a target that did not answer us directly."""
    suspicion_mult: float = 2.0
    """Scales the minimum suspicion timeout (see module formulas)."""
    suspicion_max_mult: float = 6.0
    """Lifeguard: maximum suspicion timeout as a multiple of the minimum."""
    suspicion_confirmations: int = 2
    """Lifeguard: K, confirmations from distinct members that shrink a suspicion to its minimum."""
    health_max: int = 8
    """Lifeguard: ceiling of the local health score that stretches our own timeouts."""
    gossip_interval: float = 0.2
    """Seconds between gossip rounds (only while there is news to spread)."""
    gossip_fanout: int = 3
    """Members each gossip round is sent to."""
    gossip_sends: int = 3
    """News rides on dedicated gossip messages only for its first gossip_sends sends, then
    only on probes and acks: the message count per member stays independent of n."""
    retransmit_mult: int = 4
    """Each piece of news is sent retransmit_mult × ceil(log10(n + 1)) times."""
    max_stale_records: int = 1024
    """Record news past its gossip_sends kept at most this many, the most sent dropped first (serf prunes
    its queue likewise).  Probes and acks carry ~5 records each, some 20 sends a second per node, so 1,024
    stale records get one send each in ~50 s and the ~17 sends each still owes in ~15 min, longer than the
    full-state exchange (every 300 s at 10,000 members) takes to deliver them; and a queue of every record of
    a large cluster, each waiting for its 20 sends, held most of the simulator's memory at 10,000 nodes."""
    piggyback_bytes: int = 1200
    """Budget for news piggybacked on one probe message (keeps probes small)."""
    gossip_bytes: int = 32 * 1024
    """Budget for news in one gossip message."""
    push_pull_interval: float = 30.0
    """Base seconds between full-state exchanges with one random member."""
    gossip_to_dead: float = 30.0
    """Keep gossiping to a dead member this long, so that it learns it was declared dead."""
    reconnect_interval: float = 10.0
    """Seconds between attempts to push/pull with a dead (not left) member or a seed: heals partitions."""
    dead_reap_after: float = 3600.0
    """Forget a dead member after this long (left members: left_reap_after)."""
    left_reap_after: float = 300.0
    join_retry_initial: float = 0.5
    """First join retry delay; doubles up to join_retry_max."""
    join_retry_max: float = 8.0
    lifeguard: bool = True
    """Lifeguard's local health, dynamic suspicion, nacks and buddy system; False gives plain SWIM."""

    def with_changes(self, **changes) -> "SwimConfig":
        return dataclasses.replace(self, **changes)

    def suspicion_bounds(self, n: int) -> tuple[float, float]:
        """(minimum, maximum) suspicion timeout for a cluster of ``n`` members."""
        low = self.suspicion_mult * max(1.0, math.log10(max(n, 1))) * self.probe_interval
        high = low * self.suspicion_max_mult if self.lifeguard else low
        return low, high

    def expected_confirmations(self, n: int) -> int:
        """K: independent suspicions we may expect; 0 in clusters too small to give them."""
        if not self.lifeguard or n - 2 < self.suspicion_confirmations:
            return 0
        return self.suspicion_confirmations

    def retransmit_limit(self, n: int) -> int:
        return self.retransmit_mult * max(1, math.ceil(math.log10(n + 1)))

    @staticmethod
    def full_state_scale(n: int) -> int:
        """Full-state exchanges slow down as the state grows: 1 up to 32 members, then
        ceil(log2 n − log2 32) + 1, so the bandwidth they take per member stays bounded."""
        return 1 if n <= 32 else math.ceil(math.log2(n) - math.log2(32)) + 1

    def push_pull_period(self, n: int) -> float:
        return self.push_pull_interval * self.full_state_scale(n)

    def reconnect_period(self, n: int) -> float:
        return self.reconnect_interval * self.full_state_scale(n)
