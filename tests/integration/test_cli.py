"""The CLI as people meet it: real processes, one-line errors, detach/down, JSON output."""

from __future__ import annotations

import json
import os
import signal
import socket

import pytest

from p2pswarm.cli.node_cmds import pid_alive
from p2pswarm.testing.localcluster import free_host, free_port, wait_until


def assert_one_line_error(result, code: int, *needles: str) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == code, (result.returncode, result.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("flags,needle", [
    (["--label", "foo"], "--label"),
    (["--peers", "nonsense"], "--peers"),
    (["--bind", "127.0.0.1"], "--bind"),
    (["--preset", "turbo"], "--preset"),
])
def test_bad_flags(cluster, flags, needle):
    result = cluster.cli("up", "--data-dir", str(cluster.tmp / "d"), *flags)
    assert_one_line_error(result, 2, needle)


def test_port_in_use(cluster):
    host = free_host()
    with socket.socket() as busy:
        busy.bind((host, 0))
        busy.listen()
        addr = f"{host}:{busy.getsockname()[1]}"
        result = cluster.cli("up", "--data-dir", str(cluster.tmp / "fg"), "--bind", addr, "--preset", "test")
        assert_one_line_error(result, 1, addr, "in use")
        result = cluster.cli("up", "--detach", "--data-dir", str(cluster.tmp / "bg"), "--bind", addr,
                             "--preset", "test")
        cluster.track_pid_file(cluster.tmp / "bg")
        assert_one_line_error(result, 1, "failed to start", "in use")


def test_unwritable_data_dir(cluster):
    blocker = cluster.tmp / "file"
    blocker.write_text("not a dir")
    result = cluster.cli("up", "--data-dir", str(blocker / "sub"), "--preset", "test")
    assert_one_line_error(result, 1, "data dir", str(blocker / "sub"))
    if os.geteuid() != 0:  # root ignores permission bits
        ro = cluster.tmp / "ro"
        ro.mkdir(mode=0o500)
        assert_one_line_error(cluster.cli("up", "--data-dir", str(ro), "--preset", "test"), 1, "not writable")


def test_no_node_running(cluster):
    for args in (["node", "ls"], ["down"]):
        result = cluster.cli(*args, "--data-dir", str(cluster.tmp / "none"))
        assert_one_line_error(result, 1, "no p2pswarm node is running", "p2pswarm up")


def test_detach_second_node_on_same_dir_node_ls_json_and_down(cluster):
    data_dir = cluster.tmp / "solo"
    host = free_host()
    addr = f"{host}:{free_port(host)}"
    up = cluster.cli("up", "--detach", "--data-dir", str(data_dir), "--bind", addr, "--name", "solo",
                     "--preset", "test", "--label", "zone=a", "--label", "disk=ssd")
    cluster.track_pid_file(data_dir)
    assert up.returncode == 0, up.stderr
    assert "is up at" in up.stdout and addr in up.stdout

    again = cluster.cli("up", "--detach", "--data-dir", str(data_dir), "--bind", addr, "--preset", "test")
    assert_one_line_error(again, 1, "already running", "p2pswarm down")
    foreground = cluster.cli("up", "--data-dir", str(data_dir), "--bind", addr, "--preset", "test")
    assert_one_line_error(foreground, 1, "already running")

    token = cluster.cli("cluster", "join-token", "--quiet", "--data-dir", str(data_dir))
    assert token.returncode == 0 and token.stdout.startswith("P2PS-1-"), token.stderr
    assert f"--peers {addr} --token {token.stdout.strip()}" in up.stdout  # `up` shows how to add nodes
    peer = cluster.start(1, (addr,), "--token", token.stdout.strip())  # solo is not a LocalCluster node
    wait_until(lambda: (peer.statuses() or {}).get("solo") == "alive", 30, "the peer to see solo")
    listing = cluster.cli("node", "ls", "--format", "json", "--data-dir", str(data_dir))
    assert listing.returncode == 0, listing.stderr
    members = {m["name"]: m for m in json.loads(listing.stdout)}
    assert members["solo"]["labels"] == {"disk": "ssd", "zone": "a"} and members["solo"]["self"]
    assert members["solo"]["addr"] == addr

    def n1_alive_in_listing():
        out = cluster.cli("node", "ls", "--format", "json", "--data-dir", str(data_dir)).stdout
        return any(m["name"] == "n1" and m["status"] == "alive" for m in json.loads(out))
    wait_until(n1_alive_in_listing, 30, "n1 alive in solo's listing")
    table = cluster.cli("node", "ls", "--data-dir", str(data_dir))
    header = ["ID", "NAME", "ADDRESS", "STATUS", "AVAILABILITY", "ROLE", "RTT", "ENGINE", "ISOLATION", "LABELS"]
    assert table.stdout.splitlines()[0].split() == header

    pid = int((data_dir / "node.pid").read_text())
    down = cluster.cli("down", "--data-dir", str(data_dir))
    assert down.returncode == 0, down.stderr
    assert not pid_alive(pid)
    assert not (data_dir / "node.pid").exists()
    wait_until(lambda: (peer.statuses() or {}).get("solo") == "left", 30, "the peer to see solo left")


def test_unreachable_peer_keeps_retrying_with_backoff(cluster):
    host = free_host()
    nobody = f"{host}:{free_port(host)}"
    # a well-formed token for a cluster nobody serves: the join handshake is what keeps retrying
    node = cluster.start(0, (nobody,), "--token", "P2PS-1-" + "a" * 52 + "-" + "b" * 32)
    wait_until(lambda: "retrying join with backoff" in node.log(), 30, "the retry message in the log")
    info = wait_until(lambda: (node.info() or {}).get("join_attempts", 0) >= 3 and node.info(), 30, "3 attempts")
    assert info["joined"] is False and node.proc.poll() is None


def test_sigterm_leaves_gracefully_and_exits_0(cluster):
    first = cluster.start(0)
    wait_until(first.info, 30, "the first node's API")
    second = cluster.start(1, (first.addr,))
    wait_until(lambda: (first.statuses() or {}).get("n1") == "alive", 30, "n0 to see n1")
    # and n1 to have heard from n0 (a SIGTERM within milliseconds of the join raced the first
    # exchange once in a full run: the leave never reached n0, which then saw n1 dead)
    wait_until(lambda: (second.statuses() or {}).get("n0") == "alive", 30, "n1 to see n0")
    second.proc.send_signal(signal.SIGTERM)
    assert second.proc.wait(timeout=30) == 0
    wait_until(lambda: (first.statuses() or {}).get("n1") == "left", 30, "n0 to see n1 left")
    assert not (second.data_dir / "node.pid").exists()
    assert "received SIGTERM" in second.log()
