"""The test harness itself: a joiner is never started without the token it needs because a peer answered late."""

from __future__ import annotations

import os
import signal
import threading

from p2pswarm.testing.localcluster import wait_until


def test_a_joiner_waits_for_the_token_while_its_peer_is_slow_to_answer(cluster):
    first = cluster.start(0)
    wait_until(lambda: cluster.join_token((first.addr,)), 30, "the first node's join token")
    os.kill(first.proc.pid, signal.SIGSTOP)  # a busy node: its API answers nothing for a while
    resume = threading.Timer(3.0, os.kill, (first.proc.pid, signal.SIGCONT))
    resume.start()
    try:
        joiner = cluster.start(1, (first.addr,))
    finally:
        resume.join()
        os.kill(first.proc.pid, signal.SIGCONT)
    wait_until(lambda: (first.statuses() or {}).get(joiner.name) == "alive", 30, "the joiner alive in the cluster")
    assert joiner.proc.poll() is None, joiner.log()[-2000:]
