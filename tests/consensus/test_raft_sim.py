"""The fault-injection simulation: clean runs stay linearizable, deliberately broken ones do not."""

import pytest

from p2pswarm.sim.raft_sim import run_raft_sim

RUNS = 40


def test_seed_7_is_clean():
    res = run_raft_sim(nodes=5, runs=RUNS, seed=7)
    assert res["violations"] == 0 and res["safety_violations"] == 0, res["first_problem"]
    assert res["checker_incomplete"] == 0
    assert res["ops_ok"] > 50 * RUNS  # the workload really ran
    assert res["faults"]["crash"] > RUNS and res["faults"].get("membership_done", 0) > 0


def test_same_seed_same_result():
    a = run_raft_sim(nodes=3, runs=3, seed=11)
    b = run_raft_sim(nodes=3, runs=3, seed=11)
    a.pop("wall_seconds")
    b.pop("wall_seconds")
    assert a == b


def test_skipping_fsync_is_caught():
    res = run_raft_sim(nodes=5, runs=12, seed=7, bug="skip_fsync")
    assert res["violations"] > 0


def test_stale_local_reads_are_caught():
    res = run_raft_sim(nodes=5, runs=6, seed=7, bug="stale_reads")
    assert res["violations"] > 0


def test_voting_without_log_check_is_caught():
    res = run_raft_sim(nodes=5, runs=4, seed=7, bug="vote_without_log_check")
    assert res["violations"] + res["safety_violations"] > 0


def test_unknown_bug_is_refused():
    with pytest.raises(ValueError, match="unknown bug"):
        run_raft_sim(runs=1, bug="nope")
