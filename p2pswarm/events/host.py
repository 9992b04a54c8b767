"""The node's event recorder: watches Raft apply entries, SWIM's news and the leader, and stores events.

The Raft driver calls :meth:`EventsHost.before_apply` and :meth:`EventsHost.after_apply` around every
applied entry (the observers of :class:`p2pswarm.consensus.host.RaftHost`), so cluster events are
recorded in log order on every node that applies the log.  The node hands it SWIM's member news
(:meth:`EventsHost.member`); each loop turn it checks which leader this node sees.  Nothing here may
stop the loop or Raft: a failure is counted and logged, and the entry applies as usual.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import msgpack

from p2pswarm.consensus.messages import decode_conf
from p2pswarm.events import derive
from p2pswarm.events.store import EventLog

log = logging.getLogger("p2pswarm.events")


class EventsHost:
    name = "events"

    def __init__(self, path: Path | str, raft: Any, *, wall: Callable[[], float] = time.time,
                 **retention: Any) -> None:
        """``path``: the history file; ``raft``: the node's RaftHost (for the leader it sees);
        ``retention``: :class:`EventLog`'s ``max_events`` and ``max_age``."""
        self.raft, self.wall = raft, wall
        self.history = EventLog(path, clock=wall, **retention)
        self.counters: Counter[str] = Counter()
        self._leader: tuple[str | None, int] = (None, 0)
        self._conf: tuple[tuple[str, ...], tuple[str, ...]] | None = None

    async def start(self) -> None:
        """Nothing to start: events arrive from the Raft driver and the node's loop."""

    def step(self, now: float) -> None:
        driver = self.raft.driver if self.raft is not None else None
        if driver is None:
            return
        seen = (driver.raft.lead, driver.raft.term)
        if seen[0] is not None and seen != self._leader:
            self._leader = seen
            name = self._name(driver, seen[0])
            self.history.add([derive.leader_event(seen[0], name, seen[1], self.wall())])

    async def close(self) -> None:
        self.history.close()

    def metrics(self) -> dict[str, Any]:
        return {"stored": len(self.history.events), "seq": self.history.seq, **self.counters}

    # ------------------------------------------------------------ Raft apply (the driver's observer)

    def before_apply(self, entry: Any, machines: Any) -> Any:
        """What :meth:`after_apply` needs of the state before ``entry`` applies (None: nothing to record)."""
        try:
            fresh = self.history.fresh(entry.index)
            if entry.kind == "config":  # followed on replays too: it tells a removed voter from a learner
                return ("config", decode_conf(entry.data), fresh)
            if not fresh or entry.kind != "normal":
                return None
            decoded = msgpack.unpackb(entry.data, raw=False)
            if not isinstance(decoded, dict) or not isinstance(decoded.get("cmd"), dict):
                return None
            command = decoded["cmd"]
            if decoded.get("sm") == "cluster":
                return ("cluster", command, derive.peek(machines.cluster, command))
            if decoded.get("sm") == "security":
                return ("security", command)
        except Exception:
            self._failed("reading an entry")
        return None

    def after_apply(self, entry: Any, machines: Any, mark: Any, result: Any) -> None:
        if mark is None:
            if self.history.fresh(entry.index):
                self.history.add((), entry.index)
            return
        try:
            events: list[derive.Event] = []
            wall = self.wall()
            if mark[0] == "cluster":
                events = derive.derive(mark[2], mark[1], result, machines.cluster, entry.index, wall)
            elif mark[0] == "security":
                events = derive.security_events(mark[1], bool(getattr(result, "ok", False)), entry.index, wall)
            elif mark[0] == "config":
                change = mark[1]
                if mark[2]:
                    names = {change.node: self._name(machines, change.node)}
                    events = derive.conf_events(change.op, change.node, change.result.voters,
                                                change.result.learners, self._conf, entry.index, wall, names)
                self._conf = (change.result.voters, change.result.learners)
                if not mark[2]:
                    return
            self.history.add(events, entry.index)
        except Exception:
            self._failed("deriving events")

    # ------------------------------------------------------------ this node's view

    def member(self, node: str, name: str, old: str | None, new: str) -> None:
        """SWIM's news about ``node`` (from the node's loop)."""
        event = derive.member_event(node, name, old, new, self.wall())
        if event is not None:
            self.history.add([event])

    def query(self, **options: Any) -> tuple[list[dict[str, Any]], int, bool]:
        """Stored events (see :meth:`EventLog.query`)."""
        return self.history.query(**options)

    def latest(self) -> int:
        """The cursor of the newest stored event: following from it shows only what happens next."""
        return self.history.seq

    def _name(self, driver: Any, node: str) -> str:
        """The node's name in the state, else as it gossips it (a new cluster's first events), else its id."""
        record = driver.cluster.nodes.get(node)
        if record is not None:
            return record.name
        member = self.raft.swim.member(node) if getattr(self.raft, "swim", None) is not None else None
        return member.meta.name if member is not None else node

    def _failed(self, what: str) -> None:
        self.counters["errors"] += 1
        log.error("events: failed %s (counted; the entry applies as usual)", what, exc_info=True)


def attach(raft: Any, data_dir: Path | str) -> EventsHost:
    """The node's recorder (history in ``<data-dir>/events.log``), told of every entry ``raft`` applies
    from the first one on: it must be attached before the Raft host opens its driver."""
    host = EventsHost(Path(data_dir) / "events.log", raft)
    raft.observers.append(host)
    return host
