"""Every benchmark in simulations/ still runs: its ``--quick`` mode exits 0 and prints the keys
docs/benchmarks.md quotes, measured (numbers, not null), on the real code path.

A benchmark that rots (a changed default, a renamed key, a path that stopped forwarding) fails
here instead of printing ``null`` the next time someone measures. The figures themselves are
not checked: speed belongs to the benchmarks, and these runs are too short to mean anything.
simulations/fuzz_security.py has its own test (tests/security/test_fuzz.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from p2pswarm.mesh import nft
from p2pswarm.testing.localcluster import REPO, cli_env

pytestmark = pytest.mark.timeout(420)

SIMULATIONS = REPO / "simulations"
RUN_TIMEOUT = 360.0
"""Seconds one quick run may take: each takes 1-35 s alone, several times that on a shared 2-core machine."""


def run(*argv: str, env: dict[str, str] | None = None) -> str:
    """Run ``argv`` (its own process group, killed whole by its id on timeout); its stdout, after exit 0."""
    proc = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            env=env or cli_env(), stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{argv[1]} did not finish in {RUN_TIMEOUT:g} s; stderr ends: {err[-2000:]}")
    assert proc.returncode == 0, f"{argv[1]} exited {proc.returncode}; stderr ends: {err[-2000:]}"
    return out


def quick(script: str) -> dict:
    """``simulations/<script> --quick``: the JSON object on the last line of its stdout."""
    out = run(sys.executable, str(SIMULATIONS / script), "--quick")
    lines = out.strip().splitlines()
    assert lines, f"{script} printed nothing on stdout"
    report = json.loads(lines[-1])
    assert report["quick"] is True
    return report


def measured(report: dict, *keys: str) -> None:
    """Each key is present and holds a measurement (a number, not null)."""
    for key in keys:
        assert key in report, f"{key} missing from {sorted(report)}"
        value = report[key]
        assert isinstance(value, (int, float)) and not isinstance(value, bool), f"{key} = {value!r}"


@pytest.mark.integration
def test_bench_membership_detects_a_kill_in_a_secure_cluster():
    report = quick("bench_membership.py")
    measured(report, "converge_p50_s", "detect_p50_s", "detect_max_s", "idle_cpu_percent_per_node",
             "rss_mb_per_node", "soak_converge_s", "soak_false_deaths", "soak_dead_log_lines",
             "soak_suspect_views", "soak_view_samples")
    assert report["undetected_runs"] == 0 and len(report["detect_s"]) == report["runs"]
    assert report["soak_false_deaths"] == 0


@pytest.mark.integration
def test_bench_failover_recovers_the_service():
    report = quick("bench_failover.py")
    measured(report, "recover_p50_s", "recover_p99_s")
    assert report["failed_runs"] == 0 and len(report["recover_s"]) == report["runs"]


@pytest.mark.integration
def test_bench_raft_fails_over_commits_and_loses_no_acknowledged_write():
    report = quick("bench_raft.py")
    measured(report, "failover_p50_ms", "failover_p99_ms", "failover_max_ms", "commits_per_s")
    restarts = report["whole_cluster_restarts"]
    measured(restarts, "acknowledged_writes", "lost_acknowledged_writes", "snapshot_index")
    assert restarts["acknowledged_writes"] > 0 and restarts["lost_acknowledged_writes"] == 0
    # left out of the quick run, and it says so
    assert "autopilot" in report["skipped"] and "pysyncobj" in report["skipped"]


@pytest.mark.integration
def test_bench_runtime_measures_starts_failover_orphans_and_limits():
    report = quick("bench_runtime.py")
    measured(report, "process_start_p50_ms")
    assert report["cgroup_version"] in ("cgroup-v1", "cgroup-v2", "none")
    if report["cgroup_version"] != "none":
        assert report["limits_enforced"] is True and report["isolation_violations"] == 0
    if "containers" in report["skipped"]:
        assert report["container_start_p50_s"] is None
    else:
        measured(report, "container_start_p50_s", "container_failover_p50_s")
        assert report["failed_runs"] == 0 and report["orphans_after_node_kill"] == 0


@pytest.mark.integration
def test_bench_dns_answers_and_forgets_a_dead_task():
    report = quick("bench_dns.py")
    measured(report, "qps", "python_qps", "p50_ms", "p99_ms", "stale_answer_seconds_p50", "stale_answer_seconds_p99")
    assert report["qps_tool"] in ("dnsperf", "python") and report["deaths"] == 2
    assert report["server_counters"]["counters"]["queries"] > 0


@pytest.mark.integration
def test_bench_scale_runs_a_global_service_on_every_node():
    report = quick("bench_scale.py")
    measured(report, "converge_s", "global_service_place_s", "leader_cpu_percent", "rss_mb_per_node")
    assert report["nodes_running_global_task"] == report["nodes"]
    assert report["roles"].get("worker", 0) >= 1 and "-" not in report["roles"]  # workers outside the Raft group


def test_bench_placement_places_every_replica():
    report = quick("bench_placement.py")
    measured(report, "place_seconds", "max_over_min_per_node", "overall_max_over_min_per_node", "placed",
             "zone_outage_replace_seconds", "zone_outage_replaced", "zone_outage_services")
    assert report["unplaced"] == 0 and report["placed"] == report["replicas"]
    assert len(set(report["spread_per_zone"].values())) == 1  # the spread service: as many in every zone
    # the incremental reconcile after the outage re-places exactly what ran on the lost nodes, moving nothing else
    assert report["zone_outage_replaced"] == report["zone_outage_lost_tasks"] > 0
    assert report["zone_outage_moved"] == 0 and report["zone_outage_unplaced"] == 0
    # ... by the leader's own reconciler, which planned only the services that ran there, as a full pass would
    assert report["zone_outage_same_as_full"] and 0 < report["zone_outage_services"] < report["services"]


def test_bench_security_measures_curve_and_autolock():
    report = quick("bench_security.py")
    measured(report, "curve_gossip_ratio", "curve_commit_ratio", "autolock_commit_ratio",
             "curve_gossip_cpu_ratio", "curve_commit_cpu_ratio")


@pytest.mark.integration
def test_bench_mesh_forwards_on_every_path():
    report = quick("bench_mesh.py")
    paths = ("direct", "mesh_local", "mesh_remote", "mesh_relay", "mesh_tls")
    measured(report, *(f"{p}_rps" for p in paths), *(f"{p}_newconn_rps" for p in paths),
             "added_p50_ms", "added_p50_ms_remote", "added_p50_ms_relay", "added_p50_ms_tls",
             "tls_ratio_vs_relay", "tls_ratio_vs_relay_newconn", "bulk_mesh_local_mbps", "bulk_tls_ratio_vs_relay",
             "mesh_spliced_connections")
    assert all(n == 0 for modes in report["errors"].values() for n in modes.values()), report["errors"]
    # every loopback case (each on a backend port of its own) reports the SYNs its new connections sent again
    assert set(report["loopback_syn_retransmits"]) == set(report["errors"]), report["loopback_syn_retransmits"]
    assert report["mesh_spliced_connections"] > 0  # the bulk transfers went through the splice path
    assert report["tls_sessions"]["sessions_opened"] > 0
    if "haproxy" in report["skipped"]:
        assert "ratio_vs_haproxy" not in report
    else:
        measured(report, "ratio_vs_haproxy", "ratio_vs_haproxy_newconn", "bulk_ratio_vs_haproxy")
    if nft.probe() is None:  # root with nftables: two --mesh kernel nodes forwarded in the kernel alone
        measured(report, "kernel_local_rps", "kernel_remote_rps", "kernel_newconn_per_s", "kernel_added_p50_ms",
                 "kernel_bulk_mb_s", "kernel_ratio_vs_direct")
        assert report["kernel_userspace_conns"] == 0 and report["kernel_tables_left"] == []
    else:
        assert report["kernel_unavailable"] and report["kernel_local_rps"] is None
    if os.geteuid() == 0:  # new connections from a client namespace of its own per path (another host's view)
        with_haproxy = [] if "haproxy" in report["skipped"] else ["netns_haproxy_newconn_rps"]
        measured(report, "netns_direct_newconn_rps", *with_haproxy)
        assert not any(report["netns_errors"].values()), report["netns_errors"]
        if nft.probe() is None:
            measured(report, "netns_kernel_newconn_rps", "netns_kernel_remote_newconn_rps")
        assert report["netns_left"] == []  # every client namespace it made is gone
    else:
        assert report["netns_unavailable"] and report["netns_direct_newconn_rps"] is None


SWIM_KEYS = ("false_positive_deaths", "false_suspicions", "slow_member_suspicions", "slow_members_declared_dead",
             "msgs_per_member_per_period", "bytes_per_member_per_second", "dissemination_seconds_p99",
             "dissemination_seconds_p9999", "wall_seconds", "speedup")
DETECTION_KEYS = ("first_detection_periods_p50", "first_detection_periods_p99", "first_detection_periods_mean",
                  "detection_all_seconds_p50", "detection_all_seconds_p99")
"""Measured only in the runs with crashes (the slow-member runs crash nobody)."""


def test_membership_runs_writes_every_run_and_the_plot(tmp_path):
    out = run("bash", str(SIMULATIONS / "membership_runs.sh"), "--quick", str(tmp_path),
              env={**cli_env(), "PYTHON": sys.executable})
    assert out.strip().splitlines()[-1] == str(tmp_path)
    names = ("swim-1000", "swim-1000-no-lifeguard", "swim-100", "swim-1000-slow-lifeguard",
             "swim-1000-slow-no-lifeguard", "swim-10000")
    reports = {name: json.loads((tmp_path / f"{name}.json").read_text()) for name in names}
    for name, report in reports.items():
        measured(report, *SWIM_KEYS, *(DETECTION_KEYS if "slow" not in name else ()))
    assert reports["swim-1000"]["crashed"] == 10 and reports["swim-1000"]["undetected"] == 0
    assert reports["swim-1000"]["lifeguard"] and not reports["swim-1000-no-lifeguard"]["lifeguard"]
    assert reports["swim-1000-slow-lifeguard"]["slow"] == 10
    assert (tmp_path / "swim-1000.png").stat().st_size > 0
