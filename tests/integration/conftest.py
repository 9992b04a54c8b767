"""Fixtures for integration tests; the machinery lives in localcluster.py."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from p2pswarm.testing.localcluster import LocalCluster


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
