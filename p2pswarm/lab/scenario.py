"""Chaos scenarios: TOML files (``simulations/chaos/*.toml``) parsed into checked, frozen values.

::

    name = "mixed"                 # default: the file's stem
    description = "..."            # optional, shown in the report
    nodes = 5                      # lab size, 1..20
    duration = 45                  # seconds of load, writes and actions (1..600)
    preset = "test"                # node timing preset (default "local")
    replicas = 3                   # demo service replicas
    port = 8080                    # the demo's published port
    settle = 30                    # seconds allowed after the run to heal and converge (default 30)

    [load]                         # bounded client load through the routing mesh
    rate = 20                      # requests per second, 0..200 (0: none); round-robin over all nodes
    timeout = 1.0                  # seconds per request (new connection each), 0.05..10

    [writer]                       # acknowledged writes that must survive
    rate = 2                       # writes per second, 0..20 (one at a time: a slow write slows it)
    kinds = ["kv", "service"]      # taken in turn: kv put / service update (no restart) / env (rolling update)
    timeout = 10.0                 # seconds one write may take before it counts as failed

    [[action]]                     # at: seconds from the start of the run
    at = 5
    do = "kill"                    # kill | restart | partition | heal | loss | slow
    node = 2                       # 1..nodes; kill and slow also take "leader"; restart takes "last"

Actions:

* ``kill``: SIGKILL the node and every process it runs (a machine crash).
* ``restart``: start a killed node again with its data dir (``node = "last"``: the last one killed).
* ``partition``: ``groups = [[1, 2], [3, 4, 5]]``; every node in exactly one group; nodes in
  different groups cannot reach each other (the load client still reaches all of them).
* ``heal``: remove every partition and all packet loss.
* ``loss``: ``percent = 10`` (0..100), ``nodes = [..]`` (default all), optional ``for = 10``
  (seconds, then that loss is removed); ``percent = 0`` removes loss.
* ``slow``: SIGSTOP the node's daemon for ``for`` seconds (default 3), then SIGCONT.

A bad file raises :class:`ScenarioError` with one line naming the key.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from p2pswarm.node.presets import PRESETS

ACTION_KEYS = {"kill": ("node",), "restart": ("node",), "partition": ("groups",), "heal": (),
               "loss": ("percent", "nodes", "for"), "slow": ("node", "for")}
"""Each action (its ``do``) and the keys it takes besides ``at`` and ``do``."""
WRITE_KINDS = ("kv", "service", "env")
MAX_NODES = 20
MAX_DURATION = 600.0
MAX_RATE = 200.0
MAX_WRITE_RATE = 20.0


class ScenarioError(ValueError):
    """A scenario file that cannot be run; the message is one line."""


@dataclass(frozen=True, slots=True)
class Action:
    at: float
    do: str
    node: int | str | None = None
    """A node index (1-based), or "leader" (kill, slow) / "last" (restart)."""
    groups: tuple[tuple[int, ...], ...] = ()
    percent: float = 0.0
    nodes: tuple[int, ...] = ()
    """Loss: the nodes it applies to (empty: all)."""
    duration: float | None = None
    """``for`` in the file: slow's pause, loss's lifetime."""

    def label(self) -> str:
        if self.do == "partition":
            return "partition " + "|".join("{" + ",".join(map(str, g)) + "}" for g in self.groups)
        if self.do == "loss":
            where = "" if not self.nodes else " on " + ",".join(map(str, self.nodes))
            return f"loss {self.percent:g}%{where}" + (f" for {self.duration:g}s" if self.duration else "")
        if self.do == "slow":
            return f"slow {self.node} for {self.duration:g}s"
        if self.do == "heal":
            return "heal"
        return f"{self.do} {self.node}"


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    nodes: int
    duration: float
    preset: str = "local"
    description: str = ""
    replicas: int = 3
    port: int = 8080
    settle: float = 30.0
    load_rate: float = 20.0
    load_timeout: float = 1.0
    write_rate: float = 2.0
    write_kinds: tuple[str, ...] = ("kv", "service")
    write_timeout: float = 10.0
    actions: tuple[Action, ...] = field(default_factory=tuple)


# ------------------------------------------------------------------ checks

def fail(key: str, what: str, value: Any) -> ScenarioError:
    return ScenarioError(f"{key}: {what}, got {value!r}")


def number(data: dict, key: str, default: Any, lo: float, hi: float, where: str = "") -> float:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not lo <= value <= hi:
        raise fail(where + key, f"must be a number from {lo:g} to {hi:g}", value)
    return float(value)


def whole_number(data: dict, key: str, default: Any, lo: int, hi: int, where: str = "") -> int:
    value = data.get(key, default)
    if type(value) is not int or not lo <= value <= hi:
        raise fail(where + key, f"must be a whole number from {lo} to {hi}", value)
    return value


def only_keys(data: dict, allowed: tuple[str, ...], where: str) -> None:
    unknown = sorted(str(k) for k in data if k not in allowed)
    if unknown:
        raise ScenarioError(f"{where}{unknown[0]}: unknown key (allowed: {', '.join(allowed)})")


def action_head(data: Any, i: int, keys: dict[str, tuple[str, ...]], duration: float) -> tuple[str, str, float]:
    """Check what every ``[[action]]`` shares and return its (where, do, at): a table whose ``do`` names one of
    ``keys`` (action -> the keys it takes), with no other keys, and ``at`` seconds within ``duration``.
    The lab's and the simulator's scenarios both parse their actions this way, so their errors read alike."""
    where = f"action[{i}]."
    if not isinstance(data, dict):
        raise fail(f"action[{i}]", "must be a table (use [[action]])", data)
    do = data.get("do")
    if not isinstance(do, str) or do not in keys:  # (a TOML list or table is not hashable)
        raise fail(where + "do", f"must be one of {', '.join(keys)}", do)
    only_keys(data, ("at", "do") + keys[do], where)
    return where, do, number(data, "at", None, 0, duration, where)


def _node_ref(value: Any, nodes: int, where: str, words: tuple[str, ...]) -> int | str:
    if type(value) is int and 1 <= value <= nodes:
        return value
    if isinstance(value, str) and value in words:
        return value
    extra = "".join(f' or "{w}"' for w in words)
    raise fail(where + "node", f"must be a node number from 1 to {nodes}{extra}", value)


def _node_list(value: Any, nodes: int, key: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not value or any(type(v) is not int or not 1 <= v <= nodes for v in value):
        raise fail(key, f"must be a non-empty list of node numbers from 1 to {nodes}", value)
    if len(set(value)) != len(value):
        raise fail(key, "lists a node twice", value)
    return tuple(value)


def _action(data: Any, i: int, nodes: int, duration: float) -> Action:
    where, do, at = action_head(data, i, ACTION_KEYS, duration)
    if do in ("kill", "slow"):
        node = _node_ref(data.get("node"), nodes, where, ("leader",))
        pause = number(data, "for", 3.0, 0.1, duration, where) if do == "slow" else None
        return Action(at, do, node=node, duration=pause)
    if do == "restart":
        return Action(at, do, node=_node_ref(data.get("node", "last"), nodes, where, ("last",)))
    if do == "partition":
        groups = data.get("groups")
        if not isinstance(groups, list) or len(groups) < 2:
            raise fail(where + "groups", "must be a list of at least two node lists, e.g. [[1, 2], [3, 4, 5]]",
                        groups)
        parsed = tuple(_node_list(g, nodes, where + "groups") for g in groups)
        flat = [n for g in parsed for n in g]
        if len(set(flat)) != len(flat) or set(flat) != set(range(1, nodes + 1)):
            raise fail(where + "groups", f"must put each of the nodes 1 to {nodes} in exactly one group", groups)
        return Action(at, do, groups=parsed)
    if do == "loss":
        percent = number(data, "percent", None, 0, 100, where)
        targets = _node_list(data["nodes"], nodes, where + "nodes") if "nodes" in data else ()
        lasts = number(data, "for", 0, 0, duration, where) or None
        return Action(at, do, percent=percent, nodes=targets, duration=lasts)
    return Action(at, do)


def parse(data: dict, default_name: str = "scenario") -> Scenario:
    """A checked :class:`Scenario` from decoded TOML."""
    if not isinstance(data, dict):
        raise ScenarioError("a scenario must be a TOML table")
    only_keys(data, ("name", "description", "nodes", "duration", "preset", "replicas", "port", "settle",
                 "load", "writer", "action"), "")
    name = data.get("name", default_name)
    if not isinstance(name, str) or not name or len(name) > 64 or not all(c.isalnum() or c in "-_." for c in name):
        raise fail("name", "must be 1-64 letters, digits, '-', '_' or '.'", name)
    description = data.get("description", "")
    if not isinstance(description, str):
        raise fail("description", "must be text", description)
    nodes = whole_number(data, "nodes", None, 1, MAX_NODES)
    duration = number(data, "duration", None, 1, MAX_DURATION)
    preset = data.get("preset", "local")
    if preset not in PRESETS:
        raise fail("preset", f"must be one of {', '.join(PRESETS)}", preset)
    replicas = whole_number(data, "replicas", 3, 1, 100)
    port = whole_number(data, "port", 8080, 1, 65535)
    settle = number(data, "settle", 30, 5, 300)
    load = data.get("load", {})
    if not isinstance(load, dict):
        raise fail("load", "must be a table", load)
    only_keys(load, ("rate", "timeout"), "load.")
    writer = data.get("writer", {})
    if not isinstance(writer, dict):
        raise fail("writer", "must be a table", writer)
    only_keys(writer, ("rate", "kinds", "timeout"), "writer.")
    kinds = writer.get("kinds", ["kv", "service"])
    if not isinstance(kinds, list) or not kinds or any(k not in WRITE_KINDS for k in kinds):
        raise fail("writer.kinds", f"must be a non-empty list of {', '.join(WRITE_KINDS)}", kinds)
    raw_actions = data.get("action", [])
    if not isinstance(raw_actions, list):
        raise fail("action", "must be an array of tables ([[action]])", raw_actions)
    actions = tuple(sorted((_action(a, i, nodes, duration) for i, a in enumerate(raw_actions)),
                           key=lambda a: a.at))
    return Scenario(
        name=name, nodes=nodes, duration=duration, preset=preset, description=description, replicas=replicas,
        port=port, settle=settle,
        load_rate=number(load, "rate", 20, 0, MAX_RATE, "load."),
        load_timeout=number(load, "timeout", 1.0, 0.05, 10, "load."),
        write_rate=number(writer, "rate", 2, 0, MAX_WRITE_RATE, "writer."),
        write_kinds=tuple(kinds),
        write_timeout=number(writer, "timeout", 10, 0.5, 60, "writer."),
        actions=actions,
    )


def load(path: str | Path) -> Scenario:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ScenarioError(f"cannot read scenario {path}: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"{path}: not valid TOML: {exc}") from None
    try:
        return parse(data, default_name=path.stem)
    except ScenarioError as exc:
        raise ScenarioError(f"{path}: {exc}") from None
