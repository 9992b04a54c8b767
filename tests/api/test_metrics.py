"""/metrics: the Prometheus text format, checked strictly (a small parser of our own, and
prometheus_client's when installed), and the families read from the node (agent, cluster state, mesh)."""

from __future__ import annotations

import math
import re
from types import SimpleNamespace

import pytest

from p2pswarm.api.metrics import render_metrics
from p2pswarm.api.routes import Router
from p2pswarm.api.server import Request
from p2pswarm.cluster import commands as cmd
from p2pswarm.cluster.spec import ServiceSpec
from p2pswarm.cluster.state import ClusterState

pytestmark = pytest.mark.timeout(30)

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
SAMPLE = re.compile(rf"^({NAME})(?:\{{({LABEL}(?:,{LABEL})*)?\}})? (\S+)$")
HELP = re.compile(rf"^# HELP ({NAME}) (.*)$")
TYPE = re.compile(rf"^# TYPE ({NAME}) (counter|gauge|untyped)$")


def parse_strict(text: str) -> dict[str, dict]:
    """{family: {"type", "help", "samples": {label-text: value}}}; any departure from the format fails."""
    assert text.endswith("\n") and not text.endswith("\n\n"), "one newline at the end"
    families: dict[str, dict] = {}
    current = None
    for number, line in enumerate(text[:-1].split("\n"), 1):
        where = f"line {number}: {line!r}"
        if line.startswith("# HELP "):
            m = HELP.match(line)
            assert m, where
            assert m.group(1) not in families, f"family written twice: {where}"
            assert "\n" not in m.group(2) and not re.search(r"\\[^\\n]", m.group(2)), where
            current = families[m.group(1)] = {"help": m.group(2), "type": None, "samples": {}}
            continue
        if line.startswith("# TYPE "):
            m = TYPE.match(line)
            assert m and current is not None and m.group(1) in families and families[m.group(1)] is current, where
            assert current["type"] is None and not current["samples"], f"TYPE after samples: {where}"
            current["type"] = m.group(2)
            continue
        assert not line.startswith("#") and line.strip() == line and line, where
        m = SAMPLE.match(line)
        assert m, where
        name, labels, value = m.groups()
        assert current is not None and current["type"] is not None, f"sample before HELP/TYPE: {where}"
        assert families.get(name) is current, f"sample outside its family: {where}"
        if current["type"] == "counter":
            assert name.endswith("_total"), f"counter without _total: {where}"
        number_value = float(value.replace("+Inf", "inf").replace("-Inf", "-inf"))
        assert value in ("NaN", "+Inf", "-Inf") or not math.isinf(number_value), where
        key = labels or ""
        assert key not in current["samples"], f"sample repeated: {where}"
        current["samples"][key] = number_value
    for name, family in families.items():
        assert family["type"] is not None, f"{name} has no TYPE"
    return families


def value(families, name, labels=""):
    return families[name]["samples"][labels]


# ------------------------------------------------------------ a node with everything

class Agent:
    def __init__(self, states):
        self.driver = SimpleNamespace(digest=lambda: {"v": 7, "tasks": {f"t{i}": {"s": s, "v": 1}
                                                                        for i, s in enumerate(states)}})


class Driver:
    def __init__(self):
        self.cluster = ClusterState()
        self.index = 0
        self.apply(cmd.update_node("c1", 1.0, "node-a", name="a"))
        self.apply(cmd.update_node("c2", 1.0, "node-b", name="b"))
        self.apply(cmd.create_service("c3", 2.0, ServiceSpec("web", "python", ("app.py",), replicas=3)))
        self.apply(cmd.assign_tasks("c4", 3.0, [1, self.index], [
            cmd.placement("web", 1, 1, "node-a"), cmd.placement("web", 1, 2, "node-b"),
            cmd.placement("web", 1, 3, None, message="no room")]))
        first = next(t for t in self.cluster.tasks.values() if t.slot == 1)
        self.apply(cmd.report_task_status("c5", 4.0, first.id, "running", node="node-a", port=30000))
        self.apply(cmd.update_node("c6", 5.0, "node-b", availability="drain"))

    def apply(self, command):
        self.index += 1
        assert self.cluster.apply(command, 1, self.index).ok


SNAPSHOT = {
    "members_by_status": {"alive": 2, "suspect": 1, "dead": 1, "left": 0}, "joined": True,
    "swim": {"probes": 40, "suspicions_started": 2, "gossip_sent": 9},  # no deaths_declared yet
    "transport": {"sent": 100, "received": 90, "peers_open": 3},
    "node": {"wire_errors": 4, "send_errors": 1},
    "raft": {"gauges": {"term": 5, "commit_index": 120, "applied_index": 118, "last_index": 121, "is_leader": 1},
             "counters": {"saves": 30, "save_seconds": 0.125}},  # no proposals yet
}
MESH = {"accepted": 12, "active": 2, "connect_failed": 1, "retried": 1, "relayed_out": 3, "relayed_in": 4,
        "refused_limit": 0, "errors": 5, "bind_errors": 1}


def full_node(mesh=MESH):
    driver = Driver()
    node = SimpleNamespace(metrics_snapshot=lambda: SNAPSHOT, raft_driver=lambda: driver,
                           agent=Agent(["running", "running", "starting", "failed"]), mesh_metrics=dict)
    if mesh is not None:
        node.mesh_metrics = mesh if callable(mesh) else (lambda: dict(mesh))
    return node


def test_every_family_is_well_formed_and_the_asked_for_metrics_are_there():
    node = full_node()
    fam = parse_strict(render_metrics(node.metrics_snapshot(), node))
    # membership: members by state, suspicions, deaths (0 before the first one), wire errors
    assert value(fam, "p2pswarm_members", 'status="suspect"') == 1
    assert fam["p2pswarm_members"]["type"] == "gauge"
    assert value(fam, "p2pswarm_swim_suspicions_started_total") == 2
    assert value(fam, "p2pswarm_swim_deaths_declared_total") == 0
    assert value(fam, "p2pswarm_node_wire_errors_total") == 4
    # raft: term, commit and apply index, proposals (0 before the first one)
    assert (value(fam, "p2pswarm_raft_term"), value(fam, "p2pswarm_raft_commit_index"),
            value(fam, "p2pswarm_raft_applied_index")) == (5, 120, 118)
    assert fam["p2pswarm_raft_term"]["type"] == "gauge"
    assert value(fam, "p2pswarm_raft_proposals_total") == 0
    assert value(fam, "p2pswarm_raft_save_seconds_total") == 0.125
    # tasks by state: this node's agent, and the whole cluster from the applied state
    assert value(fam, "p2pswarm_agent_tasks", 'state="running"') == 2
    assert value(fam, "p2pswarm_agent_tasks", 'state="failed"') == 1
    assert value(fam, "p2pswarm_agent_tasks", 'state="restarting"') == 0
    assert value(fam, "p2pswarm_cluster_tasks", 'state="running",desired="running"') == 1
    assert value(fam, "p2pswarm_cluster_tasks", 'state="assigned",desired="running"') == 1
    assert value(fam, "p2pswarm_cluster_tasks", 'state="new",desired="running"') == 1
    assert value(fam, "p2pswarm_cluster_tasks", 'state="failed",desired="running"') == 0
    assert value(fam, "p2pswarm_cluster_services") == 1
    assert value(fam, "p2pswarm_cluster_nodes", 'availability="drain"') == 1
    assert value(fam, "p2pswarm_service_replicas_desired", 'service="web"') == 3
    assert value(fam, "p2pswarm_service_replicas_running", 'service="web"') == 1
    # the mesh, from node.mesh_metrics()
    assert value(fam, "p2pswarm_mesh_accepted_total") == 12
    assert value(fam, "p2pswarm_mesh_connect_failed_total") == 1
    assert value(fam, "p2pswarm_mesh_relayed_in_total") == 4
    assert value(fam, "p2pswarm_mesh_errors_total") == 5
    assert fam["p2pswarm_mesh_active"]["type"] == "gauge" and value(fam, "p2pswarm_mesh_active") == 2
    assert fam["p2pswarm_mesh_bind_errors"]["type"] == "gauge"
    assert {n for n in fam if n.startswith("p2pswarm_mesh_")} == {
        "p2pswarm_mesh_accepted_total", "p2pswarm_mesh_active", "p2pswarm_mesh_connect_failed_total",
        "p2pswarm_mesh_retried_total", "p2pswarm_mesh_relayed_out_total", "p2pswarm_mesh_relayed_in_total",
        "p2pswarm_mesh_refused_limit_total", "p2pswarm_mesh_errors_total", "p2pswarm_mesh_bind_errors"}
    # transport stays as it was (untyped), except the one level it reports
    assert fam["p2pswarm_transport_sent"]["type"] == "untyped"
    assert fam["p2pswarm_transport_peers_open"]["type"] == "gauge"
    for name, family in fam.items():
        assert family["help"], name
        assert (family["type"] == "counter") == name.endswith("_total"), name


def test_no_mesh_no_mesh_metrics_and_a_failing_view_spares_the_rest():
    fam = parse_strict(render_metrics(SNAPSHOT, full_node(mesh=None)))
    assert not [n for n in fam if n.startswith("p2pswarm_mesh")]

    def broken():
        raise RuntimeError("mesh is restarting")
    node = full_node(mesh=broken)
    node.agent = SimpleNamespace(driver=SimpleNamespace(digest=lambda: 1 / 0))
    fam = parse_strict(render_metrics(SNAPSHOT, node))
    assert not [n for n in fam if n.startswith(("p2pswarm_mesh", "p2pswarm_agent"))]
    assert value(fam, "p2pswarm_cluster_services") == 1
    # odd values from the mesh are skipped, unknown counters still exported
    node = full_node(mesh={"active": 1, "new_thing": 2, "per_port": {"80": 1}, "flag": True, 3: 4})
    fam = parse_strict(render_metrics(SNAPSHOT, node))
    assert {n for n in fam if n.startswith("p2pswarm_mesh")} == {"p2pswarm_mesh_active",
                                                                "p2pswarm_mesh_new_thing_total"}


def test_labels_and_help_are_escaped_and_names_sanitised():
    snapshot = {"members_by_status": {'we"ird\\st\natus': 1}, "swim": {"bad-name.x": 1, "x": 1, "x_total": 2},
                "node": {}, "transport": {"9lives": 1}}
    text = render_metrics(snapshot)
    fam = parse_strict(text)
    assert value(fam, "p2pswarm_members", 'status="we\\"ird\\\\st\\natus"') == 1
    assert "p2pswarm_swim_bad_name_x_total" in fam
    assert value(fam, "p2pswarm_swim_x_total") == 1  # the second family of that name is dropped, not repeated
    assert "p2pswarm_transport_9lives" in fam


def test_before_raft_and_without_a_node_only_the_snapshot():
    snapshot = {"members_by_status": {"alive": 1}, "joined": False, "swim": {}, "node": {}, "transport": {},
                "raft": {}}
    fam = parse_strict(render_metrics(snapshot, SimpleNamespace(raft_driver=lambda: None, agent=None,
                                                                             mesh_metrics=dict)))
    assert value(fam, "p2pswarm_joined") == 0
    assert value(fam, "p2pswarm_swim_deaths_declared_total") == 0
    assert not [n for n in fam if n.startswith(("p2pswarm_raft", "p2pswarm_cluster", "p2pswarm_agent"))]


def test_metrics_endpoint_reads_the_node():
    node = full_node()
    response = Router(node)(Request("GET", "/metrics", {}))
    assert response.status == 200 and response.content_type.startswith("text/plain; version=0.0.4")
    fam = parse_strict(response.body.decode())
    assert value(fam, "p2pswarm_mesh_accepted_total") == 12


def test_prometheus_client_parses_it():
    parser = pytest.importorskip("prometheus_client.parser")
    node = full_node()
    text = render_metrics(node.metrics_snapshot(), node)
    families = {f.name: f for f in parser.text_string_to_metric_families(text)}
    assert families["p2pswarm_swim_suspicions_started"].type == "counter"  # the client strips _total
    assert families["p2pswarm_raft_commit_index"].samples[0].value == 120
    tasks = {(s.labels["state"], s.labels["desired"]): s.value for s in families["p2pswarm_cluster_tasks"].samples}
    assert tasks[("running", "running")] == 1
    weird = render_metrics({"members_by_status": {'a"b\\c\nd': 3}})
    sample = next(parser.text_string_to_metric_families(weird)).samples[0]
    assert sample.labels == {"status": 'a"b\\c\nd'} and sample.value == 3
    ours = parse_strict(text)
    theirs = {(s.name, tuple(sorted(s.labels.items()))) for f in families.values() for s in f.samples}
    assert len(theirs) == sum(len(f["samples"]) for f in ours.values())
