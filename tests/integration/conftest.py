"""Fixtures for integration tests; the machinery lives in localcluster.py."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from p2pswarm.testing.localcluster import LocalCluster

LOG_TAIL_LINES = 40


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test's report ends with the end of each node's log: a CI run keeps nothing else."""
    outcome = yield
    report = outcome.get_result()
    cluster = getattr(item, "funcargs", {}).get("cluster")
    if report.failed and isinstance(cluster, LocalCluster):
        report.sections.append(("node logs", log_tails(cluster)))


def pytest_collection_modifyitems(items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def cluster(tmp_path_factory):
    # A short base path: the API socket path must fit in 107 bytes.
    c = LocalCluster(tmp_path_factory.mktemp("c", numbered=True))
    try:
        yield c
    finally:
        c.close()


def log_tails(cluster: LocalCluster) -> str:
    parts = []
    for node in cluster.nodes.values():
        lines = node.log().splitlines()[-LOG_TAIL_LINES:]
        parts.append(f"----- {node.name} ({node.log_path.name}), last {len(lines)} lines -----")
        parts.extend(lines)
    return "\n".join(parts)


@pytest.fixture
def task_pids():
    """Task processes a test saw; killed at the end whatever happened (the node may be gone)."""
    pids: set[int] = set()
    yield pids
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
