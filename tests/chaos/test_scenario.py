"""Chaos scenario files: every shipped scenario parses, bad ones fail with one line naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from p2pswarm.lab.scenario import ScenarioError, load, parse

SCENARIOS = sorted((Path(__file__).resolve().parents[2] / "simulations" / "chaos").glob("*.toml"))


def base(**extra):
    return {"nodes": 5, "duration": 30, **extra}


def test_shipped_scenarios_parse():
    names = {p.stem for p in SCENARIOS}
    assert {"kill-restart", "partition-heal", "loss", "mixed"} <= names
    for path in SCENARIOS:
        sc = load(path)
        assert sc.name == path.stem
        assert all(0 <= a.at <= sc.duration for a in sc.actions)
    mixed = load(next(p for p in SCENARIOS if p.stem == "mixed"))
    assert {"kill", "partition", "loss"} <= {a.do for a in mixed.actions}


def test_defaults_and_actions():
    sc = parse(base(action=[
        {"at": 9, "do": "heal"},
        {"at": 1, "do": "kill", "node": "leader"},
        {"at": 2, "do": "restart"},
        {"at": 3, "do": "partition", "groups": [[1, 2], [3, 4, 5]]},
        {"at": 4, "do": "loss", "percent": 10, "nodes": [4, 5], "for": 5},
        {"at": 5, "do": "slow", "node": 3, "for": 2.5},
    ]), default_name="x")
    assert sc.name == "x" and sc.preset == "local" and sc.replicas == 3 and sc.port == 8080
    assert sc.load_rate == 20 and sc.write_kinds == ("kv", "service")
    assert [a.at for a in sc.actions] == [1, 2, 3, 4, 5, 9]  # sorted by time
    kill, restart, part, loss, slow, heal = sc.actions
    assert kill.node == "leader" and restart.node == "last"
    assert part.groups == ((1, 2), (3, 4, 5)) and part.label() == "partition {1,2}|{3,4,5}"
    assert loss.percent == 10 and loss.nodes == (4, 5) and loss.duration == 5
    assert loss.label() == "loss 10% on 4,5 for 5s"
    assert slow.duration == 2.5 and heal.do == "heal"


@pytest.mark.parametrize("data, words", [
    (base(nodes=0), "nodes: must be a whole number from 1 to 20"),
    (base(duration=601), "duration: must be a number from 1 to 600"),
    (base(bogus=1), "bogus: unknown key"),
    (base(preset="fast"), "preset: must be one of"),
    (base(load={"rate": 1000}), "load.rate: must be a number from 0 to 200"),
    (base(writer={"kinds": ["sql"]}), "writer.kinds: must be a non-empty list"),
    (base(action=[{"at": 1, "do": "explode"}]), "action[0].do: must be one of"),
    (base(action=[{"at": 1, "do": ["kill"]}]), "action[0].do: must be one of"),
    (base(action=[{"at": 31, "do": "heal"}]), "action[0].at: must be a number from 0 to 30"),
    (base(action=[{"at": 1, "do": "kill", "node": 6}]), "action[0].node: must be a node number from 1 to 5"),
    (base(action=[{"at": 1, "do": "kill"}]), "action[0].node"),
    (base(action=[{"at": 1, "do": "heal", "node": 1}]), "action[0].node: unknown key"),
    (base(action=[{"at": 1, "do": "partition", "groups": [[1, 2], [3, 4]]}]), "exactly one group"),
    (base(action=[{"at": 1, "do": "partition", "groups": [[1, 2, 3, 4, 5]]}]), "at least two"),
    (base(action=[{"at": 1, "do": "loss", "percent": 101}]), "action[0].percent"),
])
def test_bad_scenarios_fail_with_one_line(data, words):
    with pytest.raises(ScenarioError) as err:
        parse(data)
    assert words in str(err.value)
    assert "\n" not in str(err.value)


def test_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("nodes = [")
    with pytest.raises(ScenarioError, match=r"bad.toml: not valid TOML"):
        load(bad)
    with pytest.raises(ScenarioError, match="cannot read scenario"):
        load(tmp_path / "missing.toml")
    ok = tmp_path / "ok.toml"
    ok.write_text("nodes = 3\nduration = 10\n")
    assert load(ok).name == "ok"
