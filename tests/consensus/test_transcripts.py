"""Golden transcripts of the Raft core: a script of commands, ``----``, the exact messages and states.

Commands: ``cluster ID...``, ``time S`` (the clock moves S seconds, no timers run),
``campaign ID`` (its election timer fires now), ``deliver`` (deliver
every queued message, printing each), ``propose ID TEXT``, ``read ID N``, ``isolate ID``,
``heal``, ``status ID``.  Set REGENERATE=1 to rewrite the expected part after a deliberate
change (and review the diff).
"""

import pathlib

import pytest

from p2pswarm.consensus.messages import Entry
from p2pswarm.testing import transcript

from .harness import Cluster

HERE = pathlib.Path(__file__).parent / "transcripts"


def fmt_value(v):
    if isinstance(v, Entry):
        return f"{v.index}@{v.term}:{v.kind}" + (f":{v.data.decode()}" if v.kind == "normal" else "")
    if isinstance(v, tuple):
        return "[" + " ".join(fmt_value(x) for x in v) + "]"
    return str(v)


def fmt_msg(src, dst, m):
    fields = " ".join(f"{name}={fmt_value(getattr(m, name))}" for name, _ in m.SCHEMA if name != "source")
    return f"{src}->{dst} {type(m).__name__} {fields}"


def run_script(lines):
    out, c = [], None
    for line in lines:
        cmd, *args = line.split()
        out.append(f"> {line}")
        if cmd == "cluster":
            c = Cluster(args)
        elif cmd == "campaign":
            node = c.nodes[args[0]]
            node._election_due = c.now
            node.tick(c.now)
            c.flush()
        elif cmd == "time":
            c.now += float(args[0])
        elif cmd == "deliver":
            while c.queue:
                src, dst, msg = c.queue.pop(0)
                if (src, dst) in c.cut:
                    out.append(f"  dropped {fmt_msg(src, dst, msg)}")
                    continue
                out.append("  " + fmt_msg(src, dst, msg))
                c.nodes[dst].step(c.now, msg)
                c.flush()
        elif cmd == "propose":
            c.nodes[args[0]].propose(c.now, args[1].encode())
            c.flush()
        elif cmd == "read":
            c.nodes[args[0]].read_index(c.now, int(args[1]))
            c.flush()
        elif cmd == "isolate":
            c.isolate(args[0])
        elif cmd == "heal":
            c.heal()
        elif cmd == "status":
            st = c.nodes[args[0]].status(c.now)
            reads = [(r.request, r.index) for r in c.reads[args[0]]]
            out.append(f"  {st['role']} term={st['term']} vote={st['vote']} leader={st['leader']} "
                       f"commit={st['commit']} last={st['last_index']} reads={reads}")
        else:
            raise ValueError(f"unknown transcript command {cmd!r}")
    return out


@pytest.mark.parametrize("path", sorted(HERE.glob("*.txt")), ids=lambda p: p.stem)
def test_transcript(path):
    transcript.check(path, run_script)
