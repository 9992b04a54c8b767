"""simulations/bench_worker_resync.py still runs and measures the leader's commit latency under worker load."""

from __future__ import annotations

from .test_bench_smoke import measured, quick


def test_bench_worker_resync_measures_commit_latency_while_workers_resync():
    report = quick("bench_worker_resync.py")
    measured(report, "commit_ms_p50_quiet", "commit_ms_p99_quiet", "commit_ms_p50_resyncing",
             "commit_ms_p99_resyncing", "full_resyncs_per_s", "reply_bytes_avg")
    assert report["full_resyncs_served"] >= report["workers"]  # every worker was answered at least once
