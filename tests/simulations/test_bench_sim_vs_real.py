"""simulations/bench_sim_vs_real.py: one zone outage in the simulator and on real processes, measured alike."""

from __future__ import annotations

import importlib.util
import math
import sys

import pytest

from .test_bench_smoke import SIMULATIONS, quick

_spec = importlib.util.spec_from_file_location("bench_sim_vs_real", SIMULATIONS / "bench_sim_vs_real.py")
assert _spec is not None and _spec.loader is not None
bench = sys.modules["bench_sim_vs_real"] = importlib.util.module_from_spec(_spec)  # its dataclasses look it up
_spec.loader.exec_module(bench)


def test_detection_waits_for_the_last_observer_and_is_endless_while_one_has_not_seen_it():
    views = {"a": {"x": 11.0, "y": 12.5}, "b": {"x": 13.0, "y": None}}
    assert bench.detection(views, ["x", "y"], kill_at=10.0) == [3.0, math.inf]


def row(task: str, node: str, since: float, state: str = "running", current: bool = True) -> dict:
    return {"id": task, "node": node, "since": since, "state": state, "desired": "running", "current": current}


def test_restoration_times_the_last_replacement_of_each_service_that_lost_a_replica():
    before = {"web": {"w2"}, "db": {"d2"}, "idle": set()}
    after = {
        "web": [row("w1", "n1", 1.0), row("w3", "n3", 14.0), row("w4", "n4", 12.0),
                row("w2", "n2", 1.0, current=False)],
        "db": [row("d1", "n1", 1.0), row("d3", "n3", 13.0, state="starting")],  # its replacement is not running
        "idle": [row("i1", "n1", 1.0), row("i2", "n3", 1.0)],
    }
    assert bench.restoration(before, after, replicas=3, kill_at=10.0) == [math.inf, 4.0]


def test_the_outage_spares_the_zone_of_the_raft_leader():
    shape = bench.SCENARIO
    assert bench.zone_to_kill(shape, leader_zone=0) == shape.killed_zone
    assert bench.zone_to_kill(shape, leader_zone=shape.killed_zone) != shape.killed_zone


def test_the_simulated_side_detects_and_restores_the_whole_zone():
    run = bench.run_sim(bench.QUICK, seed=3)
    for key in bench.FIGURES:
        assert isinstance(run[key], float) and 0 < run[key] < bench.AFTER, (key, run)
    assert run["probe_failures_before"] == 0  # the simulator's machine is never busy


@pytest.mark.integration
def test_quick_run_prints_both_sides_their_ratios_and_whether_they_agree():
    report = quick("bench_sim_vs_real.py")
    sim, real = report["sim"]["median"], report["real"]["median"]
    for key in bench.FIGURES:
        for side in (sim, real):  # a number: every crashed node seen dead by every live node, every service back
            assert isinstance(side[key], (int, float)) and 0 < side[key] < bench.AFTER, (key, report)
        assert report["ratio"][key] == round(sim[key] / real[key], 3)
    assert report["agree"] == all(0.75 <= r <= 1.25 for r in report["ratio"].values())
    assert report["sim"]["seeds"] == [1] and report["real"]["repeats"] == 1
