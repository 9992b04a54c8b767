"""Scheduling limits on real processes: a service that can never be placed holds up no other service."""

from __future__ import annotations

import json
import sys
import time

from p2pswarm.scheduler.reconcile import MAX_PENDING
from p2pswarm.testing.localcluster import REPO, wait_until

from .cli_results import ok, one_line_error

APP = str(REPO / "tests" / "apps" / "http_server.py")
HUGE = 100_000
SCHEDULE_DEADLINE = 180.0
"""Generous: a loaded 2-core machine; before the fix the second service was never scheduled at all."""


def test_an_unplaceable_huge_service_does_not_stop_scheduling(cluster, task_pids, capsys):
    nodes = cluster.start_group(3)
    dd = ("--data-dir", str(nodes[1].data_dir))

    def ps(name):
        return json.loads(ok(cluster.cli("service", "ps", name, "--format", "json", *dd)).stdout)

    def web_running():
        rows = [r for r in ps("web") if r["current"] and r["desired"] == "running"]
        return rows if len(rows) == 3 and all(r["state"] == "running" for r in rows) else None

    ok(cluster.cli("service", "create", "big", "--replicas", str(HUGE), "--constraint", "node.labels.zone==nowhere",
                   "--detach", *dd, "--", sys.executable, APP))
    started = time.monotonic()
    ok(cluster.cli("service", "create", "web", "--replicas", "3", "--detach", *dd, "--", sys.executable, APP))
    try:
        rows = wait_until(web_running, SCHEDULE_DEADLINE, "service web (created after the huge one) to run 3 tasks")
    except AssertionError as exc:
        warnings = [line for n in nodes for line in n.log().splitlines() if "WARNING" in line or "ERROR" in line]
        raise AssertionError(f"{exc}; web: {ps('web')}; node warnings: {warnings[-20:]}") from None
    seconds = time.monotonic() - started
    for r in rows:
        node = next(n for n in nodes if n.name == r["node_name"])
        task_pids.add(int((node.data_dir / "tasks" / r["id"] / "pid").read_text()))
    with capsys.disabled():
        print("\n" + json.dumps({"bench": "schedule_after_unplaceable_service", "replicas": HUGE,
                                 "seconds_to_3_running": round(seconds, 3)}))

    # the huge service: a bounded number of pending tasks saying why, no scheduling failure
    pending = wait_until(lambda: ps("big") or None, 60, "the huge service's pending tasks")
    assert 0 < len(pending) <= MAX_PENDING
    assert all(r["state"] == "new" and r["node"] is None and "no node satisfies node.labels.zone==nowhere"
               in r["error"] for r in pending), pending[:3]
    info = json.loads(ok(cluster.cli("service", "inspect", "big", *dd)).stdout)
    assert (info["desired"], info["running"], info["scheduling_error"]) == (HUGE, 0, "")

    # what can never fit is refused up front, in one line
    bad = one_line_error(cluster.cli("service", "scale", f"big={HUGE + 1}", "--detach", *dd))
    assert "replicas" in bad and str(HUGE) in bad
    bad = one_line_error(cluster.cli("service", "create", "bigger", "--replicas", str(HUGE + 1), "--detach", *dd,
                                     "--", "true"))
    assert "replicas" in bad
