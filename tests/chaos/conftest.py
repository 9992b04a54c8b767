"""Chaos tests: scenario and report units (fast, everywhere) and real runs in network namespaces (root)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest


def netns_unavailable() -> str | None:
    """Why real network-namespace chaos runs cannot happen here, or None if they can."""
    if os.geteuid() != 0:
        return "needs root (network namespaces and nftables)"
    for tool, package in (("ip", "iproute2"), ("nft", "nftables")):
        if shutil.which(tool) is None:
            return f"needs `{tool}` (apt-get install -y {package})"
    probe = f"p2ps-probe-{os.getpid()}"
    try:
        made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, timeout=10)
        if made.returncode != 0:
            return f"cannot create a network namespace: {made.stderr.strip() or made.returncode}"
        nft = subprocess.run(["ip", "netns", "exec", probe, "nft", "list", "tables"], capture_output=True,
                             text=True, timeout=10)
        if nft.returncode != 0:
            return f"nftables does not work in a namespace: {nft.stderr.strip() or nft.returncode}"
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=10)
    return None


@pytest.fixture(scope="session")
def netns_ok():
    reason = netns_unavailable()
    if reason:
        pytest.skip(f"network-namespace chaos test skipped: {reason}")
