"""The dashboard's model of the cluster and of the last chaos run (pure reductions, no server)."""

from __future__ import annotations

import json
import os

from p2pswarm.dashboard import chaos, snapshot
from p2pswarm.testing.localcluster import REPO

REPORT = REPO / "simulations" / "results" / "chaos-mixed.json"


def node(name, zone=None, tasks=(), **extra):
    labels = {"zone": zone} if zone else {}
    return {"id": f"id-{name}", "name": name, "status": "alive", "role": "voter", "labels": labels,
            "tasks": list(tasks), **extra}


def test_nodes_grouped_by_zone_sorted_and_unlabelled_last():
    top = {"nodes": [node("c", "west"), node("b"), node("a", "west"), node("d", "east")], "services": []}
    zones = snapshot.state(top, None)["zones"]
    assert [(z["zone"], [n["name"] for n in z["nodes"]]) for z in zones] == [
        ("east", ["d"]), ("west", ["a", "c"]), ("", ["b"])]
    assert "tasks" not in zones[0]["nodes"][0]  # the per-node task lists go to their own panel


def test_tasks_per_node_then_the_unplaced_ones():
    web = {"name": "web.1", "service": "web", "state": "running", "port": 5000, "health": None, "id": "t1"}
    top = {"nodes": [node("n2", tasks=[web]), node("n1")], "unassigned": [dict(web, name="web.2", state="new")]}
    rows = snapshot.state(top, None)["tasks"]
    assert [(r["node"], [t["name"] for t in r["tasks"]]) for r in rows] == [
        ("n1", []), ("n2", ["web.1"]), (None, ["web.2"])]


def test_mesh_routes_grouped_by_published_port():
    def route(port, task, kind, proto="tcp"):
        path = ("kernel", "") if port == 8080 else ("userspace", "PROXY v2 needs user space")
        return {"port": port, "protocol": proto, "service": "web", "task": task, "node_name": "n1",
                "addr": "127.0.0.1:1", "route": kind, "why": "because", "path": path[0], "path_why": path[1]}
    mesh = {"running": True, "routes": [route(9000, "b", "direct"), route(8080, "x", "excluded"),
                                        route(8080, "y", "local"), route(53, "u", "direct", "udp")],
            "bind_errors": {"9000": "address in use"}}
    got = snapshot.state({"nodes": []}, mesh)["mesh"]
    assert [(p["port"], p["protocol"], [r["task"] for r in p["routes"]]) for p in got["ports"]] == [
        (53, "udp", ["u"]), (8080, "tcp", ["y", "x"]), (9000, "tcp", ["b"])]  # excluded backends last
    assert [(p["port"], p["path"], p["path_why"]) for p in got["ports"]] == [
        (53, "userspace", "PROXY v2 needs user space"), (8080, "kernel", ""),
        (9000, "userspace", "PROXY v2 needs user space")]  # each port says how this node forwards it
    assert got["bind_errors"] == {"9000": "address in use"}
    assert snapshot.state({"nodes": []}, None)["mesh"] is None


def test_chaos_charts_from_the_committed_report():
    got = chaos.load([REPORT])
    assert got["available"] and got["file"] == str(REPORT) and got["scenario"] == "mixed"
    assert got["kills"] == [{"node": "node-2", "t": 5.041, "detected_after_s": 2.585, "recovered_after_s": 2.721}]
    assert len(got["replicas"]["t"]) == len(got["replicas"]["running"]) == len(got["replicas"]["desired"]) > 10
    assert min(got["replicas"]["running"]) < max(got["replicas"]["desired"])  # the failover dip is there
    assert sum(got["requests"]["ok"]) == 980 and sum(got["requests"]["failed"]) == 120


def test_the_newest_report_of_a_directory_wins(tmp_path):
    report = json.loads(REPORT.read_text())
    old, new = tmp_path / "chaos-old.json", tmp_path / "chaos-new.json"
    old.write_text(json.dumps(report))
    new.write_text(json.dumps(dict(report, scenario="newer")))
    os.utime(old, (1000, 1000))
    (tmp_path / "other.json").write_text("{}")
    assert chaos.load([tmp_path])["scenario"] == "newer"


def test_no_report_or_a_broken_one_is_said_in_one_line(tmp_path):
    missing = chaos.load([tmp_path])
    assert not missing["available"] and str(tmp_path) in missing["reason"] and "--chaos-report" in missing["reason"]
    (tmp_path / "chaos-bad.json").write_text('{"scenario": "x"}')
    broken = chaos.load([tmp_path])
    assert not broken["available"] and "cannot read the chaos report" in broken["reason"]
    assert "\n" not in broken["reason"]
