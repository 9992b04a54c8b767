"""Scenarios of the whole-orchestrator simulation (``p2pswarm sim cluster``): built-in ones and TOML files.

A scenario is a cluster shape plus a list of timed faults.  Built-in names:

* ``zone-outage``: zone ``b`` (the second) goes dark for good at the end of the warm-up.
* ``partition``: zone ``b`` is cut off from the others for 20 s, then healed.
* ``rolling-restart``: ten waves, one second apart; each restarts 2 % of the nodes (down 3 s).
* ``flapping``: 2 % of the nodes go down for 2 s and come back, four times, 6 s apart.
* ``leader-loss``: the Raft leader's node crashes for good.

A TOML file has the same shape as ``lab chaos``'s (``simulations/chaos/*.toml``)::

    name = "two-zones"             # default: the file's stem
    nodes = 500                    # overrides --nodes (optional; likewise zones, services, replicas, loss)
    duration = 60                  # simulated seconds after the warm-up
    warmup = 15                    # seconds for the cluster to place and start every service

    [[action]]
    at = 0                         # seconds after the warm-up
    do = "zone-down"               # zone-down | zone-up | kill | restart | partition | heal | loss | kill-leader
    zone = "b"                     # zone-down / zone-up; kill and restart take fraction = 0.05 or count = 20,
                                   # and restart a "for" (seconds down); partition takes zones = ["b"]
                                   # (those zones against the rest); loss takes percent = 5

A bad file raises :class:`ScenarioError` (the lab's) with one line naming the key.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from p2pswarm.lab.scenario import ScenarioError, action_head, fail, number, only_keys, whole_number

BUILTIN = ("zone-outage", "partition", "rolling-restart", "flapping", "leader-loss")
ACTION_KEYS = {"zone-down": ("zone",), "zone-up": ("zone",), "kill": ("fraction", "count"),
               "restart": ("fraction", "count", "for"), "partition": ("zones",), "heal": (),
               "loss": ("percent",), "kill-leader": ()}
"""Each fault (its ``do``) and the keys it takes besides ``at`` and ``do``."""
MAX_NODES = 100_000
MAX_ZONES = 26


@dataclass(frozen=True, slots=True)
class Fault:
    """One timed fault; ``at`` is seconds after the warm-up."""
    at: float
    do: str
    zone: int = -1
    zones: tuple[int, ...] = ()
    fraction: float = 0.0
    count: int = 0
    down: float = 0.0
    """``restart``: seconds the nodes stay down before they start again (0: kill only)."""
    percent: float = 0.0


@dataclass(frozen=True)
class ClusterScenario:
    name: str = "zone-outage"
    nodes: int = 200
    zones: int = 5
    services: int = 20
    replicas: int = 5
    loss: float = 0.0
    seed: int = 1
    warmup: float = 15.0
    duration: float = 30.0
    """Simulated seconds after the warm-up."""
    preset: str = "lan"
    requests_per_s: float = 200.0
    """Client requests through the routing mesh, from random live nodes to random services."""
    faults: tuple[Fault, ...] = field(default_factory=tuple)

    @property
    def end(self) -> float:
        return self.warmup + self.duration


def zone_name(zone: int) -> str:
    return chr(ord("a") + zone)


def builtin(name: str, **shape: Any) -> ClusterScenario:
    """The built-in scenario ``name`` for a cluster of ``shape`` (ClusterScenario fields)."""
    base = ClusterScenario(name=name, **shape)
    zone = 1 if base.zones > 1 else 0
    faults: list[Fault]
    if name == "zone-outage":
        faults = [Fault(0.0, "zone-down", zone=zone)]
    elif name == "partition":
        faults = [Fault(0.0, "partition", zones=(zone,)), Fault(20.0, "heal")]
    elif name == "rolling-restart":
        faults = [Fault(float(w), "restart", fraction=0.02, down=3.0) for w in range(10)]
    elif name == "flapping":
        faults = [Fault(6.0 * w, "restart", fraction=0.02, down=2.0) for w in range(4)]
    elif name == "leader-loss":
        faults = [Fault(0.0, "kill-leader")]
    else:
        raise ScenarioError(f"scenario: unknown built-in {name!r} (choose one of {', '.join(BUILTIN)} or a .toml file)")
    return replace(base, faults=tuple(faults))


# ------------------------------------------------------------------ TOML files

def load(path: str | Path, **shape: Any) -> ClusterScenario:
    """A checked scenario from a TOML file; its shape keys override ``shape``."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except OSError as e:
        raise ScenarioError(f"{path}: cannot read: {e.strerror or e}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ScenarioError(f"{path}: not valid TOML: {str(e).splitlines()[0]}") from None
    try:
        return parse(data, path.stem, **shape)
    except ScenarioError as e:
        raise ScenarioError(f"{path.name}: {e}") from None


def parse(data: dict, default_name: str, **shape: Any) -> ClusterScenario:
    only_keys(data, ("name", "description", "nodes", "zones", "services", "replicas", "loss", "duration", "warmup",
                 "requests_per_s", "action"), "")
    name = data.get("name", default_name)
    if not isinstance(name, str) or not name or len(name) > 64:
        raise fail("name", "must be text of 1 to 64 characters", name)
    if not isinstance(data.get("description", ""), str):
        raise fail("description", "must be text", data.get("description"))
    base = ClusterScenario(name=name, **shape)
    nodes = whole_number(data, "nodes", base.nodes, 2, MAX_NODES)
    zones = whole_number(data, "zones", base.zones, 1, MAX_ZONES)
    if zones > nodes:
        raise fail("zones", f"must be at most nodes ({nodes})", zones)
    duration = number(data, "duration", base.duration, 1, 86_400)
    actions = data.get("action", [])
    if not isinstance(actions, list):
        raise fail("action", "must be a list of tables (use [[action]])", actions)
    faults = tuple(sorted((_fault(a, i, zones, duration) for i, a in enumerate(actions)), key=lambda f: f.at))
    return replace(base, nodes=nodes, zones=zones, duration=duration,
                   services=whole_number(data, "services", base.services, 1, 100_000),
                   replicas=whole_number(data, "replicas", base.replicas, 1, 1000),
                   loss=number(data, "loss", base.loss, 0, 0.99),
                   warmup=number(data, "warmup", base.warmup, 1, 3600),
                   requests_per_s=number(data, "requests_per_s", base.requests_per_s, 0, 100_000), faults=faults)


def _fault(data: Any, i: int, zones: int, duration: float) -> Fault:
    where, do, at = action_head(data, i, ACTION_KEYS, duration)
    if do in ("zone-down", "zone-up"):
        return Fault(at, do, zone=_zone(data.get("zone"), zones, where + "zone"))
    if do in ("kill", "restart"):
        if ("fraction" in data) == ("count" in data):
            raise fail(where + "fraction", "give exactly one of fraction and count", data.get("fraction"))
        fraction = number(data, "fraction", 0.0, 0, 1, where) if "fraction" in data else 0.0
        count = whole_number(data, "count", 0, 1, MAX_NODES, where) if "count" in data else 0
        down = number(data, "for", 3.0, 0.1, duration, where) if do == "restart" else 0.0
        return Fault(at, do, fraction=fraction, count=count, down=down)
    if do == "partition":
        names = data.get("zones")
        if not isinstance(names, list) or not names:
            raise fail(where + "zones", "must be a non-empty list of zone names", names)
        cut = tuple(sorted({_zone(z, zones, where + "zones") for z in names}))
        if len(cut) == zones:
            raise fail(where + "zones", "must leave at least one zone on the other side", names)
        return Fault(at, do, zones=cut)
    if do == "loss":
        return Fault(at, do, percent=number(data, "percent", None, 0, 99, where))
    return Fault(at, do)


def _zone(value: Any, zones: int, key: str) -> int:
    if isinstance(value, str) and len(value) == 1 and 0 <= ord(value) - ord("a") < zones:
        return ord(value) - ord("a")
    raise fail(key, f"must be a zone name from a to {zone_name(zones - 1)}", value)
