"""This node's gossiped record: named, checked sections, one per component (pure).

Every member owns one SWIM record (:meth:`p2pswarm.membership.swim.Swim.set_record`); it is
a msgpack map of section name -> value:

* ``raft``  ``[cluster_id, role, term]`` (role ``L`` leader, ``V`` voter, ``l`` learner,
  ``""`` none) and, from a Raft member, a fourth element: its applied index, set by the Raft driver:
  a joiner learns which cluster to join from it, a non-member finds the leader to forward writes
  to, ``node ls`` shows roles of members whose configuration this node has not replicated, and a
  worker notices that its assignments are behind (:mod:`p2pswarm.assignments`).  A three-element
  section (an earlier version) still reads, with applied 0.
* ``tasks`` ``[version, {task_id: record}]``, set by the agent (its digest, see
  :meth:`p2pswarm.agent.core.AgentCore.digest`): the leader's scheduler and every mesh learn
  from it where tasks run.  Its records are only checked for shape here; the scheduler and
  the mesh check what they read of them.
* ``mesh``  ``[relay_port, [unreachable member ids]]`` and, while some published port cannot be
  bound here, a third element ``{"8080" or "5353/udp": error}``, set by the mesh host: where this
  node's relay listens, which members its direct probes cannot reach, and (for ``service ps``) which
  published ports it fails to serve.
* ``caps``  ``[engine, engine detail, isolation, isolation detail]``, set by the agent at start
  (:mod:`p2pswarm.cluster.capabilities`): the scheduler registers it in the cluster state, where
  placement reads it.  A record without it (an older node) is read as unknown.
* ``dns``   ``[host, port]``, set by the DNS host (:mod:`p2pswarm.dns.host`) once it listens: where this
  node answers DNS (``node inspect`` shows it); ``["", 0]`` when it serves none.

Each component sets only its own section (:meth:`GossipRecord.set`), whenever it likes, even
before the others exist (a joiner's agent and mesh publish before it has a Raft driver); the
node flushes the record to SWIM once per loop turn, when it changed (:meth:`GossipRecord.flush`).

Readers get a decoded, checked :class:`Record` (:meth:`GossipRecord.of`): a section name this
version does not know is ignored; a malformed record (not a map, a known section that fails its
check, larger than ``wire.MAX_RECORD_BYTES``) is counted and read as empty, never trusted.  All
members run the same version: there is no compatibility with the positional records of earlier
versions.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterable

import msgpack

from p2pswarm.cluster.capabilities import ENGINES, ISOLATIONS, MAX_DETAIL
from p2pswarm.wire import MAX_ID_LEN, MAX_RECORD_BYTES, Bounds, unpack

log = logging.getLogger("p2pswarm.record")

ROLE_CODES = {"leader": "L", "voter": "V", "learner": "l", "-": ""}
ROLE_NAMES = {code: name for name, code in ROLE_CODES.items()}
MIN_ITEM_BYTES = 16
"""Fewest bytes one task of a digest takes (its id and ``{"s": .., "v": ..}``); no list or map
in a record can hold more than MAX_RECORD_BYTES / MIN_ITEM_BYTES items."""
RECORD_BOUNDS = Bounds(array=MAX_RECORD_BYTES // MIN_ITEM_BYTES, map=MAX_RECORD_BYTES // MIN_ITEM_BYTES,
                       str=MAX_RECORD_BYTES, bin=MAX_RECORD_BYTES)
"""What decoding a peer's record may build (its payload is at most wire.MAX_RECORD_BYTES)."""
MAX_PORT_ERRORS = 128
"""Port errors one mesh section may carry (a service publishes at most 64 ports, per protocol)."""
MAX_PORT_ERROR = 200
"""Characters of one port error."""
MAX_CACHED = 4096
"""Decoded peer records kept (one per member); past this the cache starts over, so members that
left long ago do not pin memory."""


@dataclass(frozen=True, slots=True)
class RaftFacts:
    """The ``raft`` section: the cluster this node belongs to, its role and term, and (a member) the
    index its state machine has applied: the version workers' assignments are at (0: not said)."""

    SECTION: ClassVar[str] = "raft"
    cluster_id: str
    role: str = "-"
    term: int = 0
    applied: int = 0

    def to_wire(self) -> list:
        wire: list = [self.cluster_id, ROLE_CODES[self.role], self.term]
        if self.applied:  # only a member says it: a non-member's section stays as it was
            wire.append(self.applied)
        return wire

    @classmethod
    def from_wire(cls, value: Any) -> RaftFacts:
        if isinstance(value, (list, tuple)) and len(value) == 4:
            cluster_id, role, term, applied = value
        else:
            (cluster_id, role, term), applied = _fields(value, 3, "raft"), 0
        if (type(cluster_id) is not str or not 0 < len(cluster_id) <= MAX_ID_LEN or role not in ROLE_NAMES
                or type(term) is not int or term < 0 or type(applied) is not int or applied < 0):
            raise ValueError("malformed raft section")
        return cls(cluster_id, ROLE_NAMES[role], term, applied)


@dataclass(frozen=True, slots=True)
class TaskDigest:
    """The ``tasks`` section: the agent's digest version and {task id: task record}."""

    SECTION: ClassVar[str] = "tasks"
    version: int
    tasks: dict

    def to_wire(self) -> list:
        return [self.version, self.tasks]

    @classmethod
    def from_wire(cls, value: Any) -> TaskDigest:
        version, tasks = _fields(value, 2, "tasks")
        if type(version) is not int or not isinstance(tasks, dict) or not all(
                type(k) is str and isinstance(v, dict) for k, v in tasks.items()):
            raise ValueError("malformed tasks section")
        return cls(version, tasks)


@dataclass(frozen=True, slots=True)
class MeshFacts:
    """The ``mesh`` section: this node's relay port, the members it cannot reach directly, and the
    published ports it cannot listen on (``(port key, error)``, key ``8080`` or ``5353/udp``)."""

    SECTION: ClassVar[str] = "mesh"
    relay_port: int
    unreachable: tuple[str, ...] = ()
    port_errors: tuple[tuple[str, str], ...] = ()

    def to_wire(self) -> list:
        wire: list = [self.relay_port, list(self.unreachable)]
        if self.port_errors:  # only when there is one: the usual section stays as it was
            wire.append(dict(self.port_errors))
        return wire

    @classmethod
    def from_wire(cls, value: Any) -> MeshFacts:
        if isinstance(value, (list, tuple)) and len(value) == 3:
            relay_port, unreachable, errors = value
        else:
            (relay_port, unreachable), errors = _fields(value, 2, "mesh"), {}
        if (type(relay_port) is not int or not 0 <= relay_port < 65536 or not isinstance(unreachable, (list, tuple))
                or not all(type(n) is str and len(n) <= MAX_ID_LEN for n in unreachable)
                or not isinstance(errors, dict) or len(errors) > MAX_PORT_ERRORS
                or not all(type(k) is str and len(k) <= 16 and type(v) is str and len(v) <= MAX_PORT_ERROR
                           for k, v in errors.items())):
            raise ValueError("malformed mesh section")
        return cls(relay_port, tuple(unreachable), tuple(sorted(errors.items())))


@dataclass(frozen=True, slots=True)
class NodeCaps:
    """The ``caps`` section: this node's container engine and task isolation, with their details
    (the engine's version or why there is none; why tasks cannot be isolated)."""

    SECTION: ClassVar[str] = "caps"
    engine: str
    engine_detail: str
    isolation: str
    isolation_detail: str

    def to_wire(self) -> list:
        return [self.engine, self.engine_detail, self.isolation, self.isolation_detail]

    @classmethod
    def from_wire(cls, value: Any) -> NodeCaps:
        engine, engine_detail, isolation, isolation_detail = _fields(value, 4, "caps")
        if (engine not in ENGINES or isolation not in ISOLATIONS
                or not all(type(d) is str and len(d) <= MAX_DETAIL for d in (engine_detail, isolation_detail))):
            raise ValueError("malformed caps section")
        return cls(engine, engine_detail, isolation, isolation_detail)

    @classmethod
    def of(cls, engine: str, engine_detail: str, isolation: str, isolation_detail: str) -> NodeCaps:
        """From the probes' answers: details cut to fit (a long error must not cost the whole record)."""
        return cls(engine, " ".join(engine_detail.split())[:MAX_DETAIL], isolation,
                   " ".join(isolation_detail.split())[:MAX_DETAIL])


@dataclass(frozen=True, slots=True)
class DnsFacts:
    """The ``dns`` section: the address this node's DNS listens on (port 0: none)."""

    SECTION: ClassVar[str] = "dns"
    host: str
    port: int

    def to_wire(self) -> list:
        return [self.host, self.port]

    @classmethod
    def from_wire(cls, value: Any) -> DnsFacts:
        host, port = _fields(value, 2, "dns")
        if type(host) is not str or len(host) > 255 or type(port) is not int or not 0 <= port < 65536:
            raise ValueError("malformed dns section")
        return cls(host, port)


Section = RaftFacts | TaskDigest | MeshFacts | NodeCaps | DnsFacts
SECTIONS: dict[str, type[Section]] = {
    cls.SECTION: cls for cls in (RaftFacts, TaskDigest, MeshFacts, NodeCaps, DnsFacts)}


@dataclass(frozen=True, slots=True)
class Record:
    """A member's decoded record; a section it does not publish (yet) is None."""

    raft: RaftFacts | None = None
    tasks: TaskDigest | None = None
    mesh: MeshFacts | None = None
    caps: NodeCaps | None = None
    dns: DnsFacts | None = None


EMPTY = Record()


def _fields(value: Any, n: int, what: str) -> list:
    if not isinstance(value, (list, tuple)) or len(value) != n:
        raise ValueError(f"malformed {what} section")
    return list(value)


def encode_record(sections: Iterable[Section]) -> bytes:
    """The record payload holding ``sections`` (one of each kind at most)."""
    return msgpack.packb({s.SECTION: s.to_wire() for s in sections}, use_bin_type=True)


def decode_record(payload: bytes) -> Record:
    """A peer's record (b"": empty); raises ValueError (WireError included) when it is malformed."""
    if not payload:
        return EMPTY
    if len(payload) > MAX_RECORD_BYTES:
        raise ValueError(f"record of {len(payload)} bytes, the limit is {MAX_RECORD_BYTES}")
    raw = unpack(payload, RECORD_BOUNDS, "gossip record", use_list=True)
    if not isinstance(raw, dict) or not all(type(k) is str for k in raw):
        raise ValueError("a record is a map of section name -> value")
    raft, tasks, mesh, caps = RaftFacts.SECTION, TaskDigest.SECTION, MeshFacts.SECTION, NodeCaps.SECTION
    return Record(raft=RaftFacts.from_wire(raw[raft]) if raft in raw else None,
                  tasks=TaskDigest.from_wire(raw[tasks]) if tasks in raw else None,
                  mesh=MeshFacts.from_wire(raw[mesh]) if mesh in raw else None,
                  caps=NodeCaps.from_wire(raw[caps]) if caps in raw else None,
                  dns=DnsFacts.from_wire(raw["dns"]) if "dns" in raw else None)


class GossipRecord:
    """This node's record as its components set it, and the checked records of every member."""

    def __init__(self, publish: Callable[[float, bytes], None] | None = None,
                 on_change: Callable[[], None] = lambda: None) -> None:
        """``publish(now, payload)``: SWIM's ``set_record`` (None: a read-only view, for tools and tests);
        ``on_change``: wakes the node's loop so that a change is flushed at once."""
        self._publish, self._on_change = publish, on_change
        self._sections: dict[str, Section] = {}
        self._dirty = False
        self._cache: dict[str, tuple[bytes, Record]] = {}
        self._routing: tuple[Any, tuple] = (None, ())
        """(the SWIM core's ``changes`` when last scanned, the routing inputs then): see ``routing_inputs_of``."""
        self.counters: Counter[str] = Counter()

    def set(self, section: Section) -> None:
        """Set one section (the caller's own); raises ValueError if it would not pass a peer's check."""
        if self._sections.get(section.SECTION) == section:
            return
        try:
            kind = SECTIONS.get(section.SECTION)
            ok = kind is type(section) and kind.from_wire(section.to_wire()) == section
        except (ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            raise ValueError(f"this node's {section.SECTION} section is malformed: {section!r}")
        self._sections[section.SECTION] = section
        self._dirty = True
        self._on_change()

    def flush(self, now: float) -> bool:
        """Publish the record if a section changed since the last flush (once per loop turn)."""
        if not self._dirty or self._publish is None:
            return False
        self._dirty = False
        payload = encode_record(self._sections.values())
        if len(payload) > MAX_RECORD_BYTES:
            self.counters["record_too_large"] += 1
            log.error("not gossiping this node's record: it is %d bytes, the limit is %d (peers keep the last one)",
                      len(payload), MAX_RECORD_BYTES)
            return False
        self._publish(now, payload)
        return True

    def routing_inputs(self, members: Iterable[Any]) -> tuple:
        """What the routing mesh and the DNS build from, per member: id, address, status and the ``tasks`` and
        ``mesh`` sections (a member's name is fixed with its id). Their change detection compares this, not
        record versions: a Raft member's record changes with every commit (its applied index), which would
        make every node rebuild both for nothing, as often as the cluster commits."""
        of = self.of
        return tuple((m.node, m.addr, m.status, (r := of(m)).tasks, r.mesh) for m in members)

    def routing_inputs_of(self, swim: Any) -> tuple:
        """``routing_inputs`` of all ``swim.members()``, scanned again only when the core's ``changes`` counter
        moved: the mesh and the DNS both look several times a second, and at a hundred members a scan costs
        more than the rest of an idle node's turn. (The same tuple while nothing changed: comparing it with
        the last one is then an identity check.) A ``swim`` without the counter is scanned every time."""
        changes = getattr(swim, "changes", None)
        if changes is None or changes != self._routing[0]:
            self._routing = (changes, self.routing_inputs(swim.members()))
        return self._routing[1]

    def of(self, member: Any) -> Record:
        """``member``'s checked record (anything with ``node`` and ``record``); EMPTY when malformed."""
        payload = member.record
        if not payload:
            return EMPTY
        cached = self._cache.get(member.node)
        if cached is not None and cached[0] == payload:
            return cached[1]
        try:
            record = decode_record(payload)
        except ValueError as err:
            self.counters["malformed_records"] += 1
            log.debug("ignored the malformed record of %s: %s", member.node, err)
            record = EMPTY
        if len(self._cache) >= MAX_CACHED:
            self._cache.clear()
        self._cache[member.node] = (payload, record)
        return record
