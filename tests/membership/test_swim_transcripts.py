"""Golden transcripts of the SWIM core: a script of commands, ``----``, the exact messages and views.

The runner is a hand-cranked driver for a few pure ``Swim`` cores (the "test" preset, each
with its own seeded ``random.Random``, so a script always replays the same way).  Nothing
happens unless a command says so; every message goes through the wire codec when delivered.

Commands: ``config KEY=VALUE...`` (changes to the preset for cores made afterwards), ``cluster
ID...`` (converged cores, all alive), ``node ID`` (a lone core), ``join ID SEED``, ``time S``
(the clock moves S seconds, no timers run), ``next ID`` (the clock moves to ID's next deadline
and ID ticks), ``tick ID``, ``run S`` (for S seconds every live core ticks at its deadlines and
messages arrive at once, unprinted: a fast-forward), ``deliver`` (deliver every queued message,
printing each, answers included), ``crash ID``, ``cut A B`` (both directions), ``heal``, ``leave
ID``, ``status ID`` (its incarnation, health, members). Member events are printed after every
command. Set REGENERATE=1 to rewrite the expected part after a deliberate change (and review the
diff).
"""

from __future__ import annotations

import pathlib
import random

import pytest

from p2pswarm import wire
from p2pswarm.membership.messages import Alive, Dead, MemberState, Meta, Record, Suspect
from p2pswarm.membership.swim import Swim
from p2pswarm.testing import transcript

from .swimnet import TEST, addr_of

HERE = pathlib.Path(__file__).parent / "transcripts"
HIDDEN = ("source", "source_addr", "target_addr")
"""Fields the ``src->dst`` prefix already says."""


def fmt_news(item) -> str:
    if isinstance(item, Alive):
        return f"alive:{item.node}@{item.incarnation}"
    if isinstance(item, Suspect):
        return f"suspect:{item.node}@{item.incarnation}/{item.by}"
    if isinstance(item, Dead):
        return f"{'left' if item.left else 'dead'}:{item.node}@{item.incarnation}/{item.by}"
    if isinstance(item, Record):
        return f"record:{item.node}#{item.version}"
    if isinstance(item, MemberState):
        return f"{item.node}:{item.status}@{item.incarnation}"
    raise TypeError(f"no transcript format for {item!r}")


def fmt_value(v) -> str:
    if isinstance(v, tuple):
        return "[" + " ".join(fmt_news(x) for x in v) + "]"
    return str(v)


def fmt_msg(src: str, dst: str, m) -> str:
    fields = " ".join(f"{name}={fmt_value(getattr(m, name))}" for name, _ in m.SCHEMA if name not in HIDDEN)
    return f"{src}->{dst} {type(m).__name__} {fields}"


class Bench:
    """The cores, the clock, and the messages they sent that are not delivered yet."""

    def __init__(self) -> None:
        self.now = 0.0
        self.config = TEST
        self.cores: dict[str, Swim] = {}
        self.by_addr: dict[str, str] = {}
        self.queue: list[tuple[str, str, object]] = []
        self.down: set[str] = set()
        self.cut: set[tuple[str, str]] = set()

    def add(self, node: str) -> Swim:
        core = Swim(node, addr_of(node), Meta(node), self.config, random.Random(node), self.now)
        self.cores[node] = core
        self.by_addr[core.addr] = node
        return core

    def collect(self, node: str) -> None:
        for out in self.cores[node].drain_outbox():
            self.queue.append((node, self.by_addr.get(out.addr, out.addr), out.msg))

    def deliver(self, out: list[str] | None) -> None:
        """Deliver every queued message (answers included), printing each into ``out`` if given."""
        while self.queue:
            src, dst, msg = self.queue.pop(0)
            dropped = dst in self.down or (src, dst) in self.cut
            if out is not None:
                out.append(f"  {'dropped ' if dropped else ''}{fmt_msg(src, dst, msg)}")
            if not dropped:
                self.cores[dst].receive(self.now, wire.decode(wire.encode(msg)))
                self.collect(dst)

    def run(self, duration: float) -> None:
        end = self.now + duration
        while True:
            due, node = min((c.next_deadline(), n) for n, c in self.cores.items() if n not in self.down)
            if due > end:
                break
            self.now = max(self.now, due)
            self.cores[node].tick(self.now)
            self.collect(node)
            self.deliver(None)
        self.now = end

    def events(self) -> list[str]:
        lines = []
        for node, core in self.cores.items():
            for e in core.drain_events():
                by = f" by {e.by}" if e.by else ""
                lines.append(f"  event {node}: {e.node} {e.old or 'new'}->{e.new}{by}")
        return lines


def run_script(lines: list[str]) -> list[str]:
    out, b = [], Bench()
    for line in lines:
        cmd, *args = line.split()
        out.append(f"> {line}")
        if cmd == "config":
            b.config = TEST.with_changes(**{k: type(getattr(TEST, k))(v) for k, v in
                                            (a.split("=") for a in args)})
        elif cmd == "cluster":
            cores = [b.add(n) for n in args]
            states = {c.id: MemberState(c.id, c.addr, 0, "alive", Meta(c.id)) for c in cores}
            for c in cores:
                c.bootstrap(b.now, states)
        elif cmd == "node":
            b.add(args[0])
        elif cmd == "join":
            b.cores[args[0]].join(b.now, [addr_of(args[1])])
        elif cmd == "time":
            b.now += float(args[0])
        elif cmd in ("next", "tick"):
            core = b.cores[args[0]]
            if cmd == "next":
                b.now = max(b.now, core.next_deadline())
                out.append(f"  now={b.now:.3f}")
            core.tick(b.now)
            b.collect(args[0])
        elif cmd == "deliver":
            b.deliver(out)
        elif cmd == "run":
            b.run(float(args[0]))
            out.append(f"  now={b.now:.3f}")
        elif cmd == "crash":
            b.down.add(args[0])
        elif cmd == "cut":
            b.cut |= {(args[0], args[1]), (args[1], args[0])}
        elif cmd == "heal":
            b.cut.clear()
        elif cmd == "leave":
            b.cores[args[0]].leave(b.now)
            b.collect(args[0])
        elif cmd == "status":
            core = b.cores[args[0]]
            members = " ".join(f"{m.node}:{m.status}@{m.incarnation}" for m in sorted(core.members(),
                                                                                    key=lambda m: m.node))
            out.append(f"  incarnation={core.incarnation} health={core.health} live={core.live_count()} "
                       f"joined={core.joined} next={core.next_deadline():.3f} members=[{members}]")
        else:
            raise ValueError(f"unknown transcript command {cmd!r}")
        out.extend(b.events())
    return out


@pytest.mark.parametrize("path", sorted(HERE.glob("*.txt")), ids=lambda p: p.stem)
def test_transcript(path):
    transcript.check(path, run_script)
