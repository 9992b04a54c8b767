"""Events from applied Raft entries and from this node's own view (pure).

A cluster event is derived from one applied entry: :func:`peek` holds, before the entry applies,
the records its command is about (records are frozen and replaced, never edited, so holding them
costs nothing), and :func:`derive` compares them with the state after it.  Comparing before and
after instead of trusting the command means a refused command, or a retry answered from the state
machine's memory, yields nothing, and every replica derives the same events from the same log (the
log index orders them).  Config entries (:func:`conf_events`) and security commands
(:func:`security_events`) are read from the entry alone.  Local events (:func:`member_event`,
:func:`leader_event`) are what this node saw: marked ``local``, they differ from node to node.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from p2pswarm.cluster.model import TERMINAL

TYPES = ("service", "task", "node", "raft", "cluster")
"""``--filter type=...``: services, tasks, nodes (in the state, or as SWIM sees them), the Raft group,
and the cluster's trust (CA, join tokens)."""
MAX_ATTR = 300
"""Characters kept of one attribute value (an error message can be long)."""
REPORTED = ("running", "complete", "failed", "rejected", "orphaned", "shutdown")
"""Task states a report turns into an event (the steps before ``running`` would only be noise).  The
decision to stop a task is a ``stop`` event (with the reason); its node's report of the end is ``shutdown``."""
UPDATE_STATES = {"completed": "update_completed", "paused": "update_paused",
                 "rollback_completed": "rollback_completed", "rollback_paused": "rollback_paused"}
"""A rolling update's outcomes, as service events (its start is the ``update`` or ``rollback`` event)."""
MAX_PER_ENTRY = 100
"""Events one entry yields at most; the rest are one ``more`` event with their count."""
SERVICE_OPS = ("create_service", "update_service", "rollback_service", "scale_service", "remove_service",
               "set_update_state")


@dataclass(frozen=True, slots=True)
class Event:
    type: str
    action: str
    subject: str
    """The service name, task id or node id the event is about."""
    at: float
    """Unix seconds: the proposer's clock for a cluster event (the same on every node), else this node's."""
    index: int = 0
    """The Raft log index that produced it (0: a local event)."""
    attrs: tuple[tuple[str, str], ...] = ()
    local: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "action": self.action, "subject": self.subject, "at": self.at,
                "index": self.index, "attrs": dict(self.attrs), "local": self.local}

    @classmethod
    def from_dict(cls, d: Any) -> "Event":
        """Raises ValueError for anything :meth:`to_dict` did not write."""
        try:
            attrs = tuple((str(k), str(v)) for k, v in d["attrs"].items())
            event = cls(str(d["type"]), str(d["action"]), str(d["subject"]), float(d["at"]), int(d["index"]),
                        attrs, bool(d["local"]))
        except (TypeError, KeyError, AttributeError) as exc:
            raise ValueError(f"not an event: {exc}") from None
        if event.type not in TYPES:
            raise ValueError(f"unknown event type {event.type!r}")
        return event


def make(type_: str, action: str, subject: str, at: float, index: int = 0, local: bool = False,
         **attrs: Any) -> Event:
    """An event; attributes that are None or empty are left out, the others become short strings."""
    kept = tuple((k, str(v)[:MAX_ATTR]) for k, v in sorted(attrs.items()) if v is not None and v != "")
    return Event(type_, action, subject, at, index, kept, local)


@dataclass
class Before:
    """The records an entry's command is about, as they were before it applied (None: absent)."""

    services: dict[str, Any] = field(default_factory=dict)
    tasks: dict[str, Any] = field(default_factory=dict)
    slots: dict[tuple[str, Any], list] = field(default_factory=dict)
    nodes: dict[str, Any] = field(default_factory=dict)


def peek(state: Any, command: Any) -> Before:
    """What :func:`derive` needs of ``state`` before ``command`` (unchecked: junk peeks nothing)."""
    before = Before()
    if not isinstance(command, dict):
        return before
    op = command.get("op")
    try:
        if op in SERVICE_OPS:
            name = _service_name(command)
            before.services[name] = state.services.get(name)
        elif op == "assign_tasks":
            for tid, _ in command.get("stop") or ():
                before.tasks[tid] = state.tasks.get(tid)
            for item in command.get("place") or ():
                key = (item["service"], item["slot"] or item["node"])
                before.slots[key] = list(state.tasks_in_slot(*key))
                if item.get("task") is not None:
                    before.tasks[item["task"]] = state.tasks.get(item["task"])
        elif op == "set_task_desired":
            for tid in command.get("tasks") or ():
                before.tasks[tid] = state.tasks.get(tid)
        elif op == "report_task_status":
            before.tasks[command["task"]] = state.tasks.get(command["task"])
        elif op == "report_tasks":
            for report in command.get("reports") or ():
                before.tasks[report["task"]] = state.tasks.get(report["task"])
        elif op in ("update_node", "remove_node"):
            before.nodes[command["node"]] = state.nodes.get(command["node"])
    except (TypeError, KeyError, AttributeError, ValueError):
        pass  # a malformed command: the state machine refuses it, and nothing is derived
    return before


def derive(before: Before, command: Any, result: Any, state: Any, index: int, wall: float) -> list[Event]:
    """The cluster events of entry ``index`` (``command`` applied with ``result``; ``state``: after it).
    ``wall``: this node's clock, for a command without its own time."""
    if not isinstance(command, dict):
        return []
    handler = _HANDLERS.get(command.get("op"))  # type: ignore[arg-type]
    if handler is None:
        return []
    at = command.get("at")
    at = float(at) if isinstance(at, (int, float)) and not isinstance(at, bool) else wall
    try:
        events = handler(_Context(before, command, result, state, index, at))
    except (TypeError, KeyError, AttributeError, ValueError):
        return []  # a command the state machine refused as malformed changed nothing
    if len(events) > MAX_PER_ENTRY:  # one batch of a huge service: a sample and a count, not 10,000 lines
        kept = events[:MAX_PER_ENTRY]
        return kept + [make(kept[-1].type, "more", kept[-1].subject, at, index, omitted=len(events) - len(kept))]
    return events


@dataclass(frozen=True)
class _Context:
    before: Before
    command: dict
    result: Any
    state: Any
    index: int
    at: float

    def event(self, type_: str, action: str, subject: str, **attrs: Any) -> Event:
        return make(type_, action, subject, self.at, self.index, **attrs)

    def node_name(self, node: str | None) -> str | None:
        record = self.state.nodes.get(node) if node is not None else None
        return record.name if record is not None else node

    def task_event(self, action: str, task: Any, **attrs: Any) -> Event:
        return self.event("task", action, task.id, service=task.service, slot=task.slot or None,
                          node=self.node_name(task.node), **attrs)


def _service_name(command: dict) -> str:
    """The service a service command is about; ValueError for a malformed one."""
    spec = command.get("spec")
    name = spec.get("name") if isinstance(spec, dict) else command.get("name")
    if not isinstance(name, str):
        raise ValueError("no service name")
    return name


def _service(c: _Context) -> list[Event]:
    op = c.command["op"]
    name = _service_name(c.command)
    old, new = c.before.services.get(name), c.state.services.get(name)
    if op == "remove_service":
        return [c.event("service", "remove", name)] if old is not None and new is None else []
    if new is None:
        return []
    if op == "set_update_state":
        outcome = UPDATE_STATES.get(new.update_state)
        if old is None or outcome is None or old.update_state == new.update_state:
            return []
        return [c.event("service", outcome, name, version=new.version, message=new.update_message)]
    if old is None:
        return [c.event("service", "create", name, version=new.version, replicas=_replicas(new))]
    if new.version == old.version:
        return []
    if op == "rollback_service":
        return [c.event("service", "rollback", name, version=new.version, message=c.command.get("message"))]
    if op == "scale_service":
        return [c.event("service", "scale", name, version=new.version, replicas=_replicas(new),
                        **{"from": _replicas(old)})]
    return [c.event("service", "update", name, version=new.version)]


def _replicas(svc: Any) -> str:
    return "global" if svc.spec.mode == "global" else str(svc.spec.replicas)


def _assign(c: _Context) -> list[Event]:
    out = []
    for tid, reason in c.command.get("stop") or ():
        old, new = c.before.tasks.get(tid), c.state.tasks.get(tid)
        if old is not None and old.desired == "running" and (new is None or new.desired != "running"):
            out.append(c.task_event("stop", old, reason=reason))
    value = getattr(c.result, "value", None)
    for tid in (value.get("placed") or ()) if isinstance(value, dict) else ():
        task = c.state.tasks.get(tid)
        if task is None:
            continue
        if task.node is None:
            if task.created == c.index:
                out.append(c.task_event("pending", task, message=task.message))
            continue
        previous = [t for t in c.before.slots.get((task.service, task.slot_key), ()) if t.id != task.id]
        last = max(previous, key=lambda t: (t.created, t.id)) if previous else None
        if last is not None and last.desired == "running" and last.state in TERMINAL:
            out.append(c.task_event("rescheduled", task, replaces=last.id, reason=_why(last)))
        else:
            out.append(c.task_event("assigned", task, replaces=last.id if last is not None else None))
    return out


def _why(task: Any) -> str:
    """Why a task ended, in one line: ``failed: exit code 3``, ``orphaned: node n2 is down``."""
    detail = task.error or task.message or (f"exit code {task.exit_code}" if task.exit_code else "")
    return f"{task.state}: {detail}" if detail else task.state


def _desired(c: _Context) -> list[Event]:
    out = []
    for tid in c.command.get("tasks") or ():
        old, new = c.before.tasks.get(tid), c.state.tasks.get(tid)
        if old is not None and old.desired == "running" and (new is None or new.desired != "running"):
            out.append(c.task_event("stop", old, reason=c.command.get("reason")))
    return out


def _report(c: _Context) -> list[Event]:
    return _reported(c, c.command) if getattr(c.result, "ok", False) else []


def _reports(c: _Context) -> list[Event]:
    """The events of the reports of a batch that were applied (a refused one changed nothing), one per task: the
    last report of a task is what the state shows after the entry, compared with the state before it."""
    value = getattr(c.result, "value", None)
    if not isinstance(value, dict):
        return []  # refused as a whole (malformed): nothing was applied
    refused = set(value.get("refused") or ())
    last = {}
    for i, report in enumerate(c.command.get("reports") or ()):
        if i not in refused:
            last[report["task"]] = report
    return [event for report in last.values() for event in _reported(c, report)]


def _reported(c: _Context, report: dict) -> list[Event]:
    tid = report["task"]
    old, new = c.before.tasks.get(tid), c.state.tasks.get(tid)
    if old is None:
        return []
    state = new.state if new is not None else report.get("state")
    if state == old.state or state not in REPORTED:
        return []
    task = new if new is not None else old
    return [c.task_event(state, task, exit_code=report.get("exit_code"),
                         error=report.get("error") or (task.error if state != "running" else None))]


def _node(c: _Context) -> list[Event]:
    nid = c.command["node"]
    old, new = c.before.nodes.get(nid), c.state.nodes.get(nid)
    if c.command["op"] == "remove_node":
        return [c.event("node", "removed", nid, name=old.name)] if old is not None and new is None else []
    if new is None:
        return []
    if old is None:
        return [c.event("node", "joined", nid, name=new.name)]
    changes = {}
    if new.availability != old.availability:
        changes["availability"] = new.availability
    if new.labels != old.labels:
        changes["labels"] = ",".join(f"{k}={v}" for k, v in new.labels)
    return [c.event("node", "update", nid, name=new.name, **changes)] if changes else []


_HANDLERS: dict[str, Callable[[_Context], list[Event]]] = {
    **{op: _service for op in SERVICE_OPS}, "assign_tasks": _assign, "set_task_desired": _desired,
    "report_task_status": _report, "report_tasks": _reports, "update_node": _node, "remove_node": _node,
}


# ------------------------------------------------------------------ other entries

def security_events(command: Any, ok: bool, index: int, wall: float) -> list[Event]:
    """Events of an applied security command: the cluster's creation, CA rotation steps, token rotations."""
    if not ok or not isinstance(command, dict):
        return []
    op, generation = command.get("op"), command.get("generation")
    generation = generation if type(generation) is int else None
    if op == "init":
        cluster = command.get("cluster_id")
        return [make("cluster", "created", str(cluster)[:64], wall, index)]
    if op == "ca":
        return [make("cluster", "ca_rotated", "ca", wall, index, generation=generation)]
    if op == "tokens":
        return [make("cluster", "token_rotated", "join-token", wall, index, generation=generation)]
    if op == "rekey":
        return [make("cluster", "rekeyed", "keys", wall, index)]
    return []


CONF_ACTIONS = {"bootstrap": "voter_added", "add_voter": "voter_added", "promote": "voter_added",
                "add_learner": "learner_added"}


def conf_events(op: str, node: str, voters: tuple[str, ...], learners: tuple[str, ...],
                previous: tuple[tuple[str, ...], tuple[str, ...]] | None, index: int, wall: float,
                names: dict[str, str]) -> list[Event]:
    """Events of a Raft config entry (``op`` on ``node``, giving ``voters`` and ``learners``); ``previous``:
    the configuration before it, when known (it tells a removed voter from a removed learner)."""
    action = CONF_ACTIONS.get(op)
    if action is None:
        was_voter = previous is not None and node in previous[0]
        was_learner = previous is not None and node in previous[1]
        action = "voter_removed" if was_voter else "learner_removed" if was_learner else "member_removed"
    return [make("raft", action, node, wall, index, name=names.get(node), voters=len(voters),
                 learners=len(learners), change=op if op != action else None)]


def member_event(node: str, name: str, old: str | None, new: str, wall: float) -> Event | None:
    """SWIM's news about a member, as this node saw it (``old`` None: first heard of)."""
    if old is None and new in ("alive", "suspect"):
        action = "joined"
    elif new == "alive":
        action = "alive"
    elif new in ("suspect", "dead", "left"):
        action = new
    else:
        return None
    return make("node", action, node, wall, local=True, name=name, was=old)


def leader_event(leader: str, name: str, term: int, wall: float) -> Event:
    """A leader this node learned of (each node sees each election on its own)."""
    return make("raft", "leader_elected", leader, wall, local=True, name=name, term=term)
