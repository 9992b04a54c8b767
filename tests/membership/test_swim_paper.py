"""Paper-cited checks on the simulator, which runs the same Swim cores the real node runs.

SWIM (A. Das, I. Gupta, A. Motivala, "SWIM: Scalable Weakly-consistent Infection-style
Process Group Membership Protocol", DSN 2002, section 3.1): with every member pinging
one random member per protocol period, a crashed member is first picked as a ping
target by some non-faulty member after an expected

    E[periods] = 1 / (1 − e^(−q_f))  ≈  e / (e − 1)  ≈  1.58     (q_f ≈ 1 without loss)

protocol periods, independent of the group size.

What the simulator reports as ``first_detection_periods`` is longer than that pick:
it runs from the crash instant to the first *suspicion*, i.e. to the end of the
failing probe, so it also includes that probe's own waiting: the direct probe_timeout
plus as long again for the helpers (2 × 0.2 s = 0.8 of a 0.5 s period in the lan
preset).  On the other side our targets come from a randomized round robin and the
members' probe phases are staggered over the period, so the first pick comes after
about one period rather than the paper's 1.58.  Measured over 800 crashes (40 nodes):
first pick ≈ 1.1 periods, pick to suspicion ≈ 0.84, first detection ≈ 1.95 ± 0.04.

So the tests check (a) the paper's quantity itself, the first pick, against e/(e−1);
(b) first detection against e/(e−1) + the probe's own waiting; and (c) that first
detection is not significantly above 2.0 periods (a one-sided 3-standard-error test:
the true mean sits just under 2.0, so a bare ``mean < 2.0`` on a finite sample would
fail for a good share of seed sets and turn into noise).
"""

from __future__ import annotations

import math
import statistics

import pytest

from p2pswarm.membership.messages import Ping
from p2pswarm.sim.swim_sim import SwimScenario, SwimSimulation, run_swim_sim

SWIM_E = math.e / (math.e - 1)


class PickRecordingSimulation(SwimSimulation):
    """Also records, per crashed member, when a live member first sent it a probe after the crash."""

    def __init__(self, sc: SwimScenario) -> None:
        super().__init__(sc)
        self.first_pick: dict[int, float] = {}

    def _transmit(self, src: int, out: list, now: float) -> None:
        for outgoing in out:
            msg = outgoing.msg
            if type(msg) is Ping and msg.source == self.cores[src].id:  # its own probe, not a relay
                dst = self.addr_index.get(outgoing.addr)
                crash = self.crashed_at.get(dst)
                if crash is not None and now >= crash and dst not in self.first_pick:
                    self.first_pick[dst] = now
        super()._transmit(src, out, now)


@pytest.fixture(scope="module")
def detections() -> dict:
    """Per crash, in protocol periods from the crash: first pick and first detection (480 crashes)."""
    picks, firsts, false_deaths, undetected = [], [], 0, 0
    for seed in range(1, 61):
        sim = PickRecordingSimulation(SwimScenario(nodes=40, duration=15.0, crash=8, seed=seed, warmup=2.0,
                                                   updates=0))
        report = sim.run()
        false_deaths += report["false_positive_deaths"]
        undetected += report["undetected"]
        period = sim.config.probe_interval
        for node, crash in sim.crashed_at.items():
            picks.append((sim.first_pick[node] - crash) / period)
            firsts.append((sim.first_detect[node] - crash) / period)
    return {"picks": picks, "firsts": firsts, "false_deaths": false_deaths, "undetected": undetected,
            "wait": 2 * sim.config.probe_timeout / sim.config.probe_interval}


def test_first_pick_of_a_crashed_member_within_swims_expectation(detections):
    picks = detections["picks"]
    assert len(picks) == 480
    assert statistics.fmean(picks) < SWIM_E


def test_first_detection_is_the_pick_plus_the_probes_own_waiting(detections):
    firsts = detections["firsts"]
    mean = statistics.fmean(firsts)
    assert detections["wait"] == pytest.approx(0.8)  # lan: 2 × probe_timeout 0.2 s / probe_interval 0.5 s
    assert mean < SWIM_E + detections["wait"]
    se = statistics.stdev(firsts) / math.sqrt(len(firsts))
    assert mean < 2.0 + 3 * se, f"first detection {mean:.3f} ± {se:.3f} periods is significantly above 2.0"
    assert mean > detections["wait"]  # nothing is suspected before a probe has waited out its timeouts
    assert detections["undetected"] == 0


def test_no_false_positive_deaths_without_loss(detections):
    assert detections["false_deaths"] == 0


@pytest.fixture(scope="module")
def large_runs() -> list[dict]:
    return [run_swim_sim(nodes=200, duration=30.0, crash=10, seed=seed, warmup=5.0, updates=0)
            for seed in (1, 2, 3)]


def test_large_cluster_detects_every_crash_without_false_positives(large_runs):
    for report in large_runs:
        assert report["loss"] == 0.0 and report["crashed"] == 10
        assert report["undetected"] == 0
        assert report["false_positive_deaths"] == 0
        assert report["false_death_declarations"] == 0
        assert report["false_suspicions"] == 0
        assert report["first_detection_periods_mean"] < SWIM_E + 0.8 + 0.6  # 10 crashes: a loose bound


def test_same_seed_same_trace_different_seed_different_trace():
    args = dict(nodes=60, duration=12.0, crash=3, loss=0.02, seed=7, warmup=2.0, updates=5)
    first = run_swim_sim(**args)
    again = run_swim_sim(**args)
    other = run_swim_sim(**{**args, "seed": 8})
    assert first["trace_digest"] == again["trace_digest"]
    assert first["trace_digest"] != other["trace_digest"]
    # the whole report (but the wall clock) is reproduced, not only the digest
    wall = ("wall_seconds", "speedup")
    assert {k: v for k, v in first.items() if k not in wall} == {k: v for k, v in again.items() if k not in wall}
