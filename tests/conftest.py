"""Fixtures for every test package: a private Docker Engine, shared by the whole session."""

from __future__ import annotations

import pytest

from p2pswarm.testing.dockerd import DockerdUnavailable, PrivateEngine, start_test_engine


@pytest.fixture(scope="session")
def docker_engine() -> PrivateEngine:
    """A dockerd of this test session's own (its socket, data and bridge under /tmp) with a local busybox
    image, started once (it takes seconds) and stopped at the end; skips when none can run here (not root,
    docker.io or busybox-static not installed)."""
    try:
        engine = start_test_engine()
    except DockerdUnavailable as exc:
        pytest.skip(f"no private Docker Engine: {exc}")
    try:
        yield engine
    finally:
        engine.daemon.stop()
