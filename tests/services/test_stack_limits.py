"""Hostile compose files: alias bombs are refused in one short line; values quoted in messages are cut."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from p2pswarm.cli.main import main
from p2pswarm.cluster.stack import MAX_MESSAGE, MAX_YAML_NODES, StackError, load, parse_yaml, translate

LAUGHS = "\n".join(
    ["x-l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    + [f"x-l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 9)]
    + ["services:", "  web:", "    command: sleep 1", "    image: *l8", ""])
"""The "billion laughs": 9 levels of 9 aliases, 9^9 (387,420,489) strings once expanded, in 600 bytes."""


def test_billion_laughs_is_refused_in_one_short_line(tmp_path):
    path = tmp_path / "bomb.yml"
    path.write_text(LAUGHS)
    with pytest.raises(StackError) as err:
        load(path)
    message = str(err.value)
    assert "alias" in message and str(path) in message
    assert len(message) <= MAX_MESSAGE and "\n" not in message


def test_stack_deploy_refuses_the_bomb_before_contacting_a_node(tmp_path):
    path = tmp_path / "bomb.yml"
    path.write_text(LAUGHS)
    out = CliRunner().invoke(main, ["stack", "deploy", "shop", "-c", str(path), "--data-dir", str(tmp_path / "none")])
    assert out.exit_code == 1
    lines = out.output.strip().splitlines()
    assert len(lines) == 1 and len(lines[0]) <= MAX_MESSAGE + len("Error: ") and "alias" in lines[0]


def test_recursive_alias_is_refused():
    with pytest.raises(StackError, match="alias"):
        parse_yaml("x-a: &a [*a]\nservices: {web: {command: sleep 1}}\n")


def test_aliases_below_the_bound_still_load():
    doc = parse_yaml("x-env: &env {A: '1', B: '2'}\nservices:\n  web: {command: sleep 1, environment: *env}\n"
                     "  api: {command: sleep 2, environment: *env}\n")
    stack = translate(doc, "shop")
    assert [dict(s.env)["A"] for s in stack.specs] == ["1", "1"]
    wide = "\n".join(["x-l0: &l0 [" + ", ".join(["a"] * 100) + "]",
                      "x-l1: &l1 [" + ", ".join(["*l0"] * 100) + "]", "services: {web: {command: sleep 1}}", ""])
    assert 10_000 < 100 * 101 < MAX_YAML_NODES  # ~10k nodes: a large but real document
    assert len(parse_yaml(wide)["x-l1"]) == 100


def test_huge_values_are_cut_in_warnings_and_errors():
    moderate = "\n".join(["x-l0: &l0 [" + ", ".join(["lol"] * 50) + "]",
                          "x-l1: &l1 [" + ", ".join(["*l0"] * 50) + "]",
                          "services:", "  web:", "    command: sleep 1", "    image: *l1",
                          f"    {'k' * 1000}: 1", ""])
    with pytest.raises(StackError) as err:
        translate(parse_yaml(moderate), "shop")
    assert len(str(err.value)) <= MAX_MESSAGE
    assert "image: must be an image reference, got <a list of 50 entries>" in str(err.value)
    stack = translate(parse_yaml(moderate.replace("image: *l1", "x-image: *l1")), "shop")
    assert len(stack.warnings) == 1 and len(stack.warnings[0]) <= MAX_MESSAGE
    with pytest.raises(StackError) as err:
        translate({"services": {"web": {"command": "sleep 1", "ports": [{"published": 80, "protocol": "x" * 10**6}]}}},
                  "shop")
    assert len(str(err.value)) <= MAX_MESSAGE and "protocol must be tcp or udp" in str(err.value)
