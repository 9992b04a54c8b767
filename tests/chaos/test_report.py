"""The chaos report from synthetic observations: requests, detection, recovery, writes, the PNG."""

from __future__ import annotations

import json

import pytest

from p2pswarm.lab import report


def observations():
    # node-2 is killed at t=5 (it ran task b), restarted at t=15; a partition heals at t=20.
    views = {}
    for name in ("node-1", "node-3"):
        rows = []
        for i in range(0, 100):
            t = i * 0.25
            status2 = "alive" if t < 5 else ("suspect" if t < (6.0 if name == "node-1" else 7.5) else
                                               "dead" if t < 16 else "alive")
            status3 = "dead" if 18 <= t < (20.5 if name == "node-1" else 21.0) else "alive"
            rows.append([t, {"node-1": status3 if name == "node-3" else "alive", "node-2": status2,
                             "node-3": status3 if name == "node-1" else "alive"}])
        views[name] = rows
    views["node-2"] = [[t, v] for t, v in views["node-1"] if t < 5 or t >= 16]
    tasks = []
    for i in range(0, 50):
        t = i * 0.5
        rows = [["node-1", "running", "a"], ["node-2", "running", "b"]]  # stale: b is still "running"
        if t >= 9:
            rows.append(["node-3", "running", "c"])
        tasks.append([t, 2, rows])
    requests = []
    for i in range(200):
        t = i * 0.1
        target = i % 3
        crashed = target == 1 and 5 <= t < 15
        requests.append([t, target, 0 if crashed or (i == 7) else 1, 2.0, "refused" if crashed or i == 7 else ""])
    writes = [
        {"seq": 1, "kind": "kv", "t": 1.0, "dt": 0.01, "ok": True, "error": "", "key": "k1"},
        {"seq": 2, "kind": "service", "t": 2.0, "dt": 0.02, "ok": True, "error": "", "gen": 2},
        {"seq": 3, "kind": "kv", "t": 6.0, "dt": 10.0, "ok": False, "error": "no Raft quorum", "key": "k3"},
    ]
    return {
        "scenario": "unit", "mode": "transport", "nodes": 3, "duration": 20.0, "started_at": "now",
        "preset": "test", "mesh": True, "replicas": 2, "down": {"node-2": [[5.0, 15.0]]}, "views": views,
        "tasks": tasks, "targets": ["node-1", "node-2", "node-3"],
        "actions": [
            {"at": 5, "t": 5.0, "do": "kill", "label": "kill node-2", "node": "node-2", "ok": True, "detail": ""},
            {"at": 15, "t": 15.0, "do": "restart", "label": "restart node-2", "node": "node-2", "ok": True,
             "detail": ""},
            {"at": 18, "t": 18.0, "do": "partition", "label": "partition {1}|{3}", "node": None, "ok": True,
             "detail": ""},
            {"at": 20, "t": 20.0, "do": "heal", "label": "heal", "node": None, "ok": True, "detail": ""},
        ],
        "requests": requests, "writes": writes, "lost": [], "final": {"settled": True}, "end": 24.0,
    }


def test_requests_per_second_and_error_rates():
    rep = report.build(observations())
    rq = rep["requests"]
    assert rq["sent"] == 200 and len(rq["per_second"]) == 20
    assert rq["failed_to_crashed_nodes"] == 33 and rq["sent_to_crashed_nodes"] == 33
    assert rq["failed"] == 34 and rq["error_rate"] == 0.17
    assert rq["error_rate_up_targets"] == round(1 / 167, 4)
    assert rq["errors"] == {"refused": 34}
    assert rq["per_second"][0] == {"t": 0, "ok": 9, "failed": 1, "failed_crashed_target": 0}
    assert sum(p["ok"] + p["failed"] for p in rq["per_second"]) == 200
    assert rq["by_target"]["node-2"]["failed"] == 34  # 33 while crashed, 1 before
    assert rep["summary"]["request_error_rate"] == 0.17


def test_detection_is_the_last_observer_and_recovery_ignores_stale_tasks():
    rep = report.build(observations())
    (kill,) = rep["kills"]
    assert kill["seen_dead_after_s"] == {"node-1": 1.0, "node-3": 2.5}
    assert kill["detected_after_s"] == 2.5
    # b died with node-2 even though the state still says running: back to 2 when c runs at t=9.
    assert kill["tasks_on_victim"] == 1 and kill["recovered_after_s"] == 4.0
    series = rep["replicas"]["series"]
    assert [r for r in series if r[0] == 7.0] == [[7.0, 1, 2]]
    assert [r for r in series if r[0] == 16.0] == [[16.0, 2, 2]]  # b stays dead after the restart
    (heal,) = rep["heals"]
    assert heal["merged_after_s"] == 1.0


def test_undetected_kill_is_reported_not_hidden():
    obs = observations()
    for rows in obs["views"].values():
        for _, view in rows:
            view["node-2"] = "alive"
    (kill,) = report.build(obs)["kills"]
    assert kill["detected_after_s"] is None
    assert kill["never_saw_it_dead"] == ["node-1", "node-3"]


def test_writes_acked_failed_and_lost():
    obs = observations()
    rep = report.build(obs)
    w = rep["writes"]
    assert (w["attempted"], w["acked"], w["failed"], w["lost"]) == (3, 2, 1, 0)
    assert w["by_kind"] == {"kv": {"acked": 1, "failed": 1, "lost": 0}, "service": {"acked": 1, "failed": 0, "lost": 0}}
    obs["lost"] = [{"kind": "kv", "seq": 1, "key": "k1", "found": None}]
    rep = report.build(obs)
    assert rep["writes"]["lost"] == 1 and rep["summary"]["acknowledged_writes_lost"] == 1
    json.dumps(rep)  # JSON-ready


def test_raft_changes_count_leader_switches_and_time_without_leader():
    samples = [[0, "node-1", 2, ["node-1", "node-2", "node-3"]], [1, "node-1", 2, ["node-1", "node-2", "node-3"]],
               [2, None, None, []], [3, None, None, []], [4, "node-3", 3, ["node-1", "node-3", "node-4"]],
               [5, "node-3", 3, ["node-1", "node-3", "node-4"]]]
    out = report.raft_changes(samples)
    assert out["leader_changes"] == 1 and out["seconds_without_leader"] == 2.0
    assert [c["t"] for c in out["changes"]] == [0, 2, 4]


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    obs = observations()
    obs["raft"] = [[0, "node-1", 2, ["node-1"]], [5, None, None, []], [6, "node-3", 3, ["node-3"]]]
    rep = report.build(obs)
    path = tmp_path / "t.png"
    report.plot(rep, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 20_000
