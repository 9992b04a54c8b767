"""`p2pswarm top` on a real terminal: a 3-node LocalCluster with a service, `top` in a detached tmux
session on a private tmux server (its own socket, killed at the end), read back with capture-pane."""

from __future__ import annotations

import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys

import pytest

from p2pswarm.testing.localcluster import REPO, LocalCluster, cli_env, free_port, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240),
              pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")]
APP = str(REPO / "tests" / "apps" / "http_server.py")
WAIT = 60.0
"""Generous: a loaded 2-core machine runs three nodes, their tasks, tmux and top at once."""


class Tmux:
    """A private tmux server (``-L``): nothing here can touch the user's sessions, and kill-server ends all
    of it (the pane's processes get SIGHUP)."""

    def __init__(self) -> None:
        self.socket = f"p2pswarm-test-{os.getpid()}-{secrets.token_hex(4)}"
        self.socket_path = ""

    def __call__(self, *args: str, check: bool = True) -> str:
        out = subprocess.run(["tmux", "-L", self.socket, "-f", "/dev/null", *args], capture_output=True, text=True,
                             timeout=30, stdin=subprocess.DEVNULL)
        if check and out.returncode != 0:
            raise AssertionError(f"tmux {' '.join(args)} failed: {out.stderr.strip()}")
        return out.stdout

    def start(self, name: str, command: str, window: bool = False) -> None:
        if window:
            self("new-window", "-d", "-t", "top", "-n", name, "-c", str(REPO), command)
        else:
            self("new-session", "-d", "-s", "top", "-n", name, "-x", "150", "-y", "45", "-c", str(REPO), command)
            self.socket_path = self("display-message", "-p", "#{socket_path}").strip()

    def screen(self, name: str) -> str:
        return self("capture-pane", "-p", "-t", f"top:{name}")

    def show(self, name: str, fmt: str) -> str:
        return self("display-message", "-p", "-t", f"top:{name}", fmt).strip()

    def wait_screen(self, name: str, cond, what: str) -> str:
        last = [""]

        def check():
            last[0] = self.screen(name)
            return cond(last[0])
        try:
            wait_until(check, WAIT, what, interval=0.2)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the screen was:\n{last[0]}") from None
        return last[0]

    def close(self) -> None:
        self("kill-server", check=False)
        if self.socket_path.endswith(self.socket):  # tmux leaves the socket file behind
            try:
                os.unlink(self.socket_path)
            except OSError:
                pass


@pytest.fixture
def tmux():
    t = Tmux()
    try:
        yield t
    finally:
        t.close()


@pytest.fixture
def cluster(tmp_path_factory):
    c = LocalCluster(tmp_path_factory.mktemp("top", numbered=True))  # short: the API socket path must fit
    try:
        yield c
    finally:
        c.close()


def top_command(data_dir) -> str:
    """`top` in a shell that reports how it ended, then waits (so the pane stays to be read)."""
    env = cli_env()
    argv = [sys.executable, "-m", "p2pswarm.cli.main", "top", "--data-dir", str(data_dir)]
    return (f"env PYTHONPATH={shlex.quote(env['PYTHONPATH'])} TERM=screen {shlex.join(argv)}; "
            f"echo \"TOP EXITED rc=$?\"; exec sleep 600")


def node_row(screen: str, name: str) -> str:
    match = re.search(rf"^{name}(?: \*)?\s+[0-9a-f]{{16}}\s.*$", screen, re.M)
    return match.group(0) if match else ""


def test_top_live_view_in_tmux(cluster, tmux):
    first = cluster.start(0)
    wait_until(first.info, WAIT, "the first node's API")
    nodes = [first] + [cluster.start(i, (first.addr,)) for i in (1, 2)]

    def in_group():
        try:
            return all(len(n.api.get("/v1/cluster")["members"]) == 3 for n in nodes)
        except Exception:
            return False
    wait_until(in_group, WAIT, "3 nodes in the Raft group")
    port = free_port("127.0.0.1")
    created = cluster.cli("service", "create", "web", "--replicas", "3", "--publish", str(port), "--detach",
                          "--data-dir", str(first.data_dir), "--", sys.executable, APP)
    assert created.returncode == 0, created.stderr

    tmux.start("live", top_command(first.data_dir))
    tmux.start("ctrlc", top_command(nodes[1].data_dir), window=True)  # for later; it starts meanwhile
    once = subprocess.Popen(cluster.command("top", "--data-dir", str(nodes[1].data_dir)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, cwd=REPO, env=cli_env())
    try:
        out, err = once.communicate(timeout=WAIT)
    finally:
        once.kill()
    # not a terminal: one plain snapshot
    assert once.returncode == 0, err
    assert "\x1b" not in out and node_row(out, "n1").startswith("n1 *")

    header = r"cluster [0-9a-f]{16}  leader n\d  term \d+  commit \d+  members 3 alive, 0 suspect, 0 dead  "
    screen = tmux.wait_screen("live", lambda s: re.match(header, s)
                              and re.search(r"^web\s+replicated\s+3/3\s", s, re.M)
                              and all(node_row(s, f"n{i}") for i in range(3)), "top showing 3 nodes and web 3/3")
    assert tmux.show("live", "#{alternate_on}") == "1"
    assert re.search(r"\s+alive\s+(leader|voter)\s", node_row(screen, "n1"))
    assert str(port) in screen and "TASKS PER NODE" in screen
    assert len(re.findall(r"web\.\d running :\d+", screen)) == 3
    colored = tmux("capture-pane", "-p", "-e", "-t", "top:live")  # with the escape codes
    assert re.search(r"\x1b\[32malive\b", colored), "alive is green on a terminal"

    # a node stops: its row turns suspect/dead and the header counts it
    cluster.kill(2)
    tmux.wait_screen("live", lambda s: re.search(r"\s(suspect|dead)\b", node_row(s, "n2"))
                              and "members 2 alive" in s, "n2 no longer alive on the screen")
    assert re.search(r"\x1b\[3[13]m(suspect|dead)\b", tmux("capture-pane", "-p", "-e", "-t", "top:live"))

    # the local node goes away: top says so, keeps retrying, and recovers when it is back
    cluster.kill(0)
    tmux.wait_screen("live", lambda s: s.startswith("node not reachable: ") and "NODES (" in s,
                     "the not-reachable line above the last data")
    assert "TOP EXITED" not in tmux.screen("live")
    cluster.start(0, (nodes[1].addr,))
    tmux.wait_screen("live", lambda s: s.startswith("cluster ") and node_row(s, "n0"), "top reconnecting")

    # q quits: the process exits 0 and the terminal is back to normal (main screen, cursor shown)
    tmux("send-keys", "-t", "top:live", "q")
    tmux.wait_screen("live", lambda s: "TOP EXITED rc=0" in s, "top to exit on q")
    assert tmux.show("live", "#{alternate_on} #{cursor_flag}") == "0 1"

    # Ctrl-C quits as cleanly
    tmux.wait_screen("ctrlc", lambda s: node_row(s, "n1"), "the second top")
    tmux("send-keys", "-t", "top:ctrlc", "C-c")
    tmux.wait_screen("ctrlc", lambda s: "TOP EXITED rc=0" in s, "top to exit on Ctrl-C")
    assert tmux.show("ctrlc", "#{alternate_on} #{cursor_flag}") == "0 1"

    # the same node's /metrics on a live cluster: tasks by state from its agent and from the cluster state
    def metrics_show_tasks():
        text = nodes[1].api.get("/metrics")
        return all(re.search(pattern, text, re.M) for pattern in (
            r'^p2pswarm_agent_tasks\{state="running"\} [1-9]', r'^p2pswarm_cluster_tasks\{state="running",'
            r'desired="running"\} [1-9]', r'^p2pswarm_service_replicas_desired\{service="web"\} 3$',
            r'^p2pswarm_members\{status="dead"\} 1$', r"^p2pswarm_swim_deaths_declared_total \d+$",
            r"^p2pswarm_raft_proposals_total \d+$", r"^# TYPE p2pswarm_raft_commit_index gauge$"))
    wait_until(metrics_show_tasks, WAIT, "n1's /metrics to show its running task and n2 dead")
