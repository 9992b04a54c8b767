"""CLI behaviour without real processes: one-line errors, exit codes, and `node ls` output."""

import asyncio
import json
import threading

import pytest
from click.testing import CliRunner

from p2pswarm.cli.main import main
from p2pswarm.cli.output import fmt_labels, fmt_rtt, table
from p2pswarm.node.daemon import Node, NodeOptions
from p2pswarm.transport.memory import MemoryNetwork, MemoryTransport

pytestmark = pytest.mark.timeout(60)


def run(*args):
    return CliRunner().invoke(main, list(args))


def assert_one_line_error(result, code, *needles):
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0]


@pytest.mark.parametrize("args,needle", [
    (["up", "--label", "foo"], "--label"),
    (["up", "--label", "=v"], "--label"),
    (["up", "--peers", "nonsense"], "--peers"),
    (["up", "--peers", "a:1,b:99999"], "--peers"),
    (["up", "--bind", "localhost"], "--bind"),
    (["up", "--advertise", "x:0"], "--advertise"),
    (["up", "--preset", "fast"], "--preset"),
    (["up", "--bogus"], "--bogus"),
    (["node", "ls", "--format", "yaml"], "--format"),
    (["frobnicate"], "frobnicate"),
])
def test_bad_flags_are_one_line_and_exit_2(args, needle):
    assert_one_line_error(run(*args), 2, needle)


def test_bind_all_needs_advertise(tmp_path):
    assert_one_line_error(run("up", "--data-dir", str(tmp_path), "--bind", "0.0.0.0:7946"), 2, "--advertise")


def test_unwritable_data_dir(tmp_path):
    (tmp_path / "f").write_text("")
    assert_one_line_error(run("up", "--data-dir", str(tmp_path / "f" / "d")), 1, "cannot create data dir")


def test_commands_without_a_node_say_how_to_start_one(tmp_path):
    for args in (["node", "ls"], ["down"]):
        assert_one_line_error(run(*args, "--data-dir", str(tmp_path)), 1, "p2pswarm up", str(tmp_path))


def test_debug_shows_the_traceback(tmp_path):
    result = run("--debug", "node", "ls", "--data-dir", str(tmp_path))
    assert result.exit_code == 1 and "Traceback" in result.stderr


def test_no_arguments_prints_help():
    result = run()
    assert result.exit_code == 0 and "up" in result.output and "down" in result.output


def test_output_helpers():
    assert table(["A", "BB"], [["xxx", None], ["y", "z"]]) == "A    BB\nxxx\ny    z"
    assert fmt_labels({"b": "2", "a": "1"}) == "a=1,b=2" and fmt_labels({}) == "-"
    assert fmt_rtt(None) == "-" and fmt_rtt(1.234) == "1.2ms" and fmt_rtt(250.4) == "250ms"


def test_node_ls_table_and_json_against_a_running_node(tmp_path):
    ready, stop = threading.Event(), threading.Event()
    holder = {}

    async def serve():
        node = Node(NodeOptions(data_dir=str(tmp_path), bind="10.1.0.1:7946", name="solo", preset="test",
                                labels=(("zone", "a"),)),
                    transport_factory=lambda o: MemoryTransport(MemoryNetwork(), o.bind))
        holder["node"] = node
        task = asyncio.ensure_future(node.run())
        await node.started.wait()
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.02)
        node.request_shutdown()
        await task

    thread = threading.Thread(target=asyncio.run, args=(serve(),))
    thread.start()
    try:
        assert ready.wait(10)
        members = json.loads(run("node", "ls", "--format", "json", "--data-dir", str(tmp_path)).stdout)
        assert [(m["name"], m["status"], m["labels"]) for m in members] == [("solo", "alive", {"zone": "a"})]
        result = run("node", "ls", "--data-dir", str(tmp_path))
        assert result.exit_code == 0
        header, row = result.stdout.strip().splitlines()
        assert header.split() == ["ID", "NAME", "ADDRESS", "STATUS", "AVAILABILITY", "ROLE", "RTT", "ENGINE",
                                  "ISOLATION", "LABELS"]
        cells = row.split()[1:]
        assert cells[:4] == ["*", "solo", "10.1.0.1:7946", "alive"] and cells[6] == "-" and cells[-1] == "zone=a"
        assert cells[4] in ("active", "-")  # active once the scheduler registered it in the cluster state
        assert cells[7] in ("docker", "unavailable", "unknown")  # the engine, as the node probed it (if yet)
        assert cells[5] in ("leader", "voter")  # a one-node cluster: its only voter, soon its leader
    finally:
        stop.set()
        thread.join(10)


@pytest.mark.parametrize("args,needle", [
    (["service", "create", "web"], "--image"),
    (["service", "create", "web", "--image", "Bad Image"], "image:"),
    (["service", "create", "web", "--image", "nginx", "--limit-memory", "1M"], "limit_memory: must be at least 6M"),
    (["service", "create", "web", "--image", "nginx", "--mount", "type=bind,source=x,target=/x"], "mounts.source"),
    (["service", "create", "web", "--image", "nginx", "--secret", "source=db,target=/abs"], "secrets.target"),
    (["service", "create", "web", "--image", "nginx", "--stop-signal", "SIGWHAT"], "stop_signal"),
    (["service", "create", "web", "--stop-grace-period", "soon", "--", "sleep", "9"], "stop_grace"),
])
def test_bad_workload_flags_are_refused_before_anything_is_sent(tmp_path, args, needle):
    """No node runs here: a bad flag must be refused by the CLI itself, in one line."""
    result = run(*args, "--data-dir", str(tmp_path / "none"))
    assert result.exit_code != 0
    assert needle in result.output, result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("args,stdin,needle", [
    (["secret", "create", "db", "/no/such/file"], None, "error: cannot read /no/such/file: No such file or directory"),
    (["secret", "create", "db", "-"], "", "error: stdin is empty"),
    (["config", "create", "c", "-"], "x" * (500 * 1024 + 1), "error: stdin is over 500 KiB"),
])
def test_secret_and_config_data_is_checked_before_anything_is_sent(tmp_path, args, stdin, needle):
    result = CliRunner().invoke(main, [*args, "--data-dir", str(tmp_path / "none")], input=stdin)
    assert result.exit_code != 0 and result.output.startswith(needle) and result.output.count("\n") == 1, result.output


def test_a_command_without_a_node_points_at_the_running_lab(tmp_path, monkeypatch):
    """With the lab up, a bare `service ls` must say where its nodes are, not "start one with `p2pswarm up`"."""
    import socket

    node = tmp_path / "lab" / "node-1"
    node.mkdir(parents=True)
    monkeypatch.setenv("P2PSWARM_LAB_DIR", str(tmp_path / "lab"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("P2PSWARM_DATA_DIR", raising=False)
    assert "start one with `p2pswarm up`" in run("service", "ls").stderr  # no lab node answers yet
    with socket.socket(socket.AF_UNIX) as api:
        api.bind(str(node / "api.sock"))
        assert_one_line_error(run("service", "ls"), 1, f"--data-dir {node}", f"P2PSWARM_DATA_DIR={node}")


def test_lab_chaos_replots_a_saved_report(tmp_path):
    from p2pswarm.testing.localcluster import REPO

    saved = tmp_path / "chaos-mixed.json"
    saved.write_text((REPO / "simulations" / "results" / "chaos-mixed.json").read_text())
    result = run("lab", "chaos", "--replot", str(saved))
    assert result.exit_code == 0, result.output
    png = tmp_path / "chaos-mixed.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    (tmp_path / "bad.json").write_text("{not json")
    assert_one_line_error(run("lab", "chaos", "--replot", str(tmp_path / "bad.json")), 1, "not a chaos report")
    assert_one_line_error(run("lab", "chaos"), 2, "--scenario")
