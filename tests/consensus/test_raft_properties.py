"""Raft's safety properties (paper Figure 3) over random fault schedules, with hypothesis.

Messages are delivered one at a time in any order, duplicated or dropped; nodes crash
and restart from what they persisted; links are cut and healed; the leader proposes,
compacts, transfers leadership and serves reads.  After every action we check:
election safety, log matching, leader completeness and state machine safety.
"""

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pswarm.consensus.raft import LEADER, RaftError

from .harness import CFG, Cluster

IDS = ["a", "b", "c"]

KINDS = (["time"] * 4 + ["stall"] * 2 + ["settle"] + ["deliver"] * 4 + ["duplicate", "drop"]
         + ["crash", "restart", "isolate", "heal"] + ["propose"] * 3 + ["compact", "transfer", "read"])
ACTIONS = st.tuples(st.sampled_from(KINDS), st.integers(0, 10_000), st.floats(0.0, 1.0))


class Checker:
    def __init__(self) -> None:
        self.leader_of_term: dict[int, str] = {}
        self.committed: dict[int, tuple] = {}  # index -> (term, data): what the cluster committed
        self.checked_leaders: set = set()

    def check(self, c: Cluster) -> None:
        live = [n for i, n in c.nodes.items() if i not in c.down]
        for nid, applied in c.applied.items():  # state machine safety
            for e in applied:
                assert self.committed.setdefault(e.index, (e.term, e.data)) == (e.term, e.data), \
                    f"{nid} applied a different entry at {e.index}"
        for n in live:  # election safety
            if n.role == LEADER:
                assert self.leader_of_term.setdefault(n.term, n.id) == n.id, f"two leaders in term {n.term}"
        for n in live:  # everything a node counts as committed is what the cluster committed
            for i in range(n.log.snap_index + 1, n.log.committed + 1):
                e = n.log.entry(i)
                assert self.committed.setdefault(i, (e.term, e.data)) == (e.term, e.data)
        for n in live:  # leader completeness: a new leader holds every committed entry
            if n.role == LEADER and (n.id, n.term) not in self.checked_leaders:
                self.checked_leaders.add((n.id, n.term))
                for i, (term, data) in self.committed.items():
                    if i > n.log.snap_index:
                        assert i <= n.log.last_index() and n.log.entry(i).term == term, \
                            f"leader {n.id} of term {n.term} lacks committed entry {i}"
        for x in live:  # log matching
            for y in live:
                if x.id >= y.id:
                    continue
                lo = max(x.log.snap_index, y.log.snap_index) + 1
                hi = min(x.log.last_index(), y.log.last_index())
                same = [i for i in range(lo, hi + 1) if x.log.term(i) == y.log.term(i)]
                if same:
                    top = same[-1]
                    for i in range(lo, top + 1):
                        assert x.log.entry(i) == y.log.entry(i), f"logs of {x.id},{y.id} differ at {i}"


def run(c: Cluster, action: tuple) -> None:
    kind, num, frac = action
    node_id = IDS[num % len(IDS)]
    if kind == "time":  # the clock moves and the network delivers promptly
        c.advance(0.02 + 0.6 * frac, step=0.02)
    elif kind == "stall":  # the clock moves; messages stay queued for the deliver actions
        c.now += 0.02 + 0.3 * frac
        for nid, node in c.nodes.items():
            if nid not in c.down:
                node.tick(c.now)
        c.flush()
    elif kind == "settle":
        c.deliver()
    elif kind in ("deliver", "duplicate", "drop"):
        if not c.queue:
            return
        src, dst, msg = c.queue[num % len(c.queue)]
        if kind != "duplicate":
            del c.queue[num % len(c.queue)]
        if kind != "drop" and (src, dst) not in c.cut and dst not in c.down and src not in c.down:
            c.nodes[dst].step(c.now, msg)
            c.flush()
    elif kind == "crash" and not c.down:
        c.crash(node_id)
    elif kind == "restart" and c.down:
        c.restart(sorted(c.down)[0], seed=num)
    elif kind == "isolate":
        c.isolate(node_id)
    elif kind == "heal":
        c.heal()
    elif kind == "compact" and node_id not in c.down:
        if c.nodes[node_id].log.applied > c.nodes[node_id].log.snap_index:
            c.compact(node_id)
    elif kind in ("propose", "transfer", "read"):
        for nid, node in c.nodes.items():
            if nid in c.down or node.role != LEADER:
                continue
            try:
                if kind == "propose":
                    node.propose(c.now, b"v%d" % num)
                elif kind == "transfer":
                    node.transfer_leadership(c.now, node_id)
                else:
                    node.read_index(c.now, num)
            except RaftError:
                pass
        c.flush()


EXAMPLES = int(os.environ.get("RAFT_PROPERTY_EXAMPLES", "200"))  # raise it for a deeper search


@settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**16), actions=st.lists(ACTIONS, min_size=5, max_size=120))
def test_safety_under_random_faults(seed, actions):
    c = Cluster(IDS, cfg=CFG.with_changes(election_timeout=0.3, heartbeat_interval=0.05), seed=seed)
    checker = Checker()
    for action in actions:
        run(c, action)
        checker.check(c)
    c.heal()
    for nid in list(c.down):
        c.restart(nid)
    c.advance(3.0)
    checker.check(c)
    assert len(c.leaders()) == 1  # and once the faults stop, the cluster recovers
