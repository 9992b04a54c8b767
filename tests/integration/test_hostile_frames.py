"""A real node fed a thousand hostile frames on its gossip port keeps its memory and its API.

Finding: one 4 MiB frame of 0x80 bytes cost the node 0.35 s and ~330 MB on its event loop. An
--insecure node takes plaintext ZeroMQ, so a bare PUSH socket reaches its decoder. The frames
go in batches, each sent once the node has counted the previous one as wire errors (the
PULL socket queues up to RCVHWM frames: unpaced, the test would measure that queue, not the
decoder).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import zmq

from p2pswarm.testing import hostile
from p2pswarm.testing.localcluster import wait_until

pytestmark = pytest.mark.timeout(600)

FRAMES = 1000
FULL_EVERY = 10
"""Every tenth frame is a whole 4 MiB one; the others are 64 KiB (4 GB of loopback otherwise)."""
BATCH = 10
RSS_GROWTH_LIMIT_KB = 20 * 1024


def status_kb(pid: int, field: str) -> int:
    """``VmRSS`` (resident now) or ``VmHWM`` (its high-water mark) of ``pid``, in KiB."""
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M).group(1))


def wire_errors(node) -> int:
    metrics = node.api.get("/metrics")
    match = re.search(r"^p2pswarm_node_wire_errors_total (\d+)", metrics, re.M)
    return int(match.group(1)) if match else 0


def test_a_thousand_hostile_frames_leave_memory_and_api_alone(cluster):
    node = cluster.start(0, (), "--insecure")
    wait_until(node.info, 60, "the node's API")
    small, full = hostile.frames(64 * 1024), hostile.frames()
    names = sorted(small)
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    push.connect(f"tcp://{node.addr}")
    try:
        push.send(small["empty maps"])  # first contact: ZeroMQ's and the decoder's one-time allocations
        wait_until(lambda: wire_errors(node) >= 1, 30, "the first frame counted")
        base_errors = wire_errors(node)
        rss_before = status_kb(node.proc.pid, "VmRSS")
        hwm_before = max(status_kb(node.proc.pid, "VmHWM"), rss_before)
        for start in range(0, FRAMES, BATCH):
            for i in range(start, start + BATCH):
                if i % FULL_EVERY == 0:
                    push.send(full[names[i // FULL_EVERY % len(names)]])
                else:
                    push.send(small[names[i % len(names)]])
            wait_until(lambda: wire_errors(node) >= base_errors + start + BATCH, 60,
                       f"frames {start}..{start + BATCH - 1} counted as wire errors")
        rss_growth = status_kb(node.proc.pid, "VmRSS") - rss_before
        hwm_growth = status_kb(node.proc.pid, "VmHWM") - hwm_before
    finally:
        push.close()
        ctx.term()
    print(f"{FRAMES} hostile frames: RSS growth {rss_growth} KiB, peak RSS growth {hwm_growth} KiB")
    assert wire_errors(node) == base_errors + FRAMES
    assert rss_growth < RSS_GROWTH_LIMIT_KB, f"resident set grew by {rss_growth} KiB"
    assert hwm_growth < RSS_GROWTH_LIMIT_KB, f"peak resident set grew by {hwm_growth} KiB"
    assert node.info() is not None and node.proc.poll() is None  # the API answers (within its 2 s timeout)
