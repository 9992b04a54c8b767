"""`p2pswarm sim swim|raft`: the JSON report is the last line, bad flags are one line."""

from __future__ import annotations

import json
import subprocess
import sys

from click.testing import CliRunner

from p2pswarm.cli.main import main


def last_json(output: str) -> dict:
    return json.loads(output.strip().splitlines()[-1])


def test_sim_swim_reports_detection_and_is_reproducible(tmp_path):
    args = ("sim", "swim", "--nodes", "40", "--duration", "20", "--crash", "2", "--seed", "5", "--json")
    first = last_json(CliRunner().invoke(main, list(args)).output)
    second = last_json(CliRunner().invoke(main, list(args)).output)
    assert first["nodes"] == 40 and first["crashed"] == 2 and first["undetected"] == 0
    assert first["false_positive_deaths"] == 0
    assert first["trace_digest"] == second["trace_digest"]


def test_sim_swim_writes_a_plot(tmp_path):
    png = tmp_path / "swim.png"
    result = CliRunner().invoke(main, ["sim", "swim", "--nodes", "30", "--duration", "15", "--crash", "2",
                                       "--plot", str(png), "--json"])
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sim_raft_finds_no_violation_and_reports_availability():
    result = CliRunner().invoke(main, ["sim", "raft", "--runs", "3", "--seed", "7", "--json"])
    report = last_json(result.output)
    assert report["runs"] == 3 and report["violations"] == 0 and report["ops"] > 0
    assert {"elections_p50_ms", "unavailable_ms_p50", "unavailable_ms_p99"} <= set(report)


def test_sim_bad_flags_are_one_line_errors():
    for args in (["sim", "swim", "--loss", "1.5"], ["sim", "swim", "--nodes", "10", "--crash", "9", "--slow", "5"],
                 ["sim", "raft", "--bug", "nonsense"]):
        done = subprocess.run([sys.executable, "-m", "p2pswarm.cli.main", *args], capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 2, done
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in done.stderr


def test_sim_partition_heals_and_the_halves_merge():
    result = CliRunner().invoke(main, ["sim", "swim", "--nodes", "60", "--duration", "90", "--partition", "15",
                                       "--seed", "3", "--json"])
    report = last_json(result.output)
    assert report["partition_seconds"] == 15.0
    assert report["partition_merge_seconds"] not in (None, "inf")
    assert report["false_positive_deaths"] == 0
