"""Golden transcripts of the Raft core: a script of commands, ``----``, the exact messages and states.

Commands: ``cluster ID...``, ``time S`` (the clock moves S seconds, no timers run),
``campaign ID`` (its election timer fires now), ``deliver`` (deliver
every queued message, printing each; ``deliver N``: only the next N), ``propose ID TEXT``, ``read ID N``,
``isolate ID``, ``heal``, ``status ID``, ``tick ID`` (its timers that are due fire), ``drop SRC DST`` (the next
queued message from SRC to DST is lost), ``compact ID [TEXT]`` (its state machine image, by default
``state@INDEX``, replaces its log), ``crash ID`` / ``restart ID`` (from what it persisted), ``disk ID`` (its
persisted snapshot and the snapshot it is receiving).  Set REGENERATE=1 to rewrite the expected part after a
deliberate change (and review the diff).
"""

import pathlib

import pytest

from p2pswarm.consensus.messages import ConfState, Entry
from p2pswarm.testing import transcript

from .harness import Cluster

HERE = pathlib.Path(__file__).parent / "transcripts"


def fmt_value(v):
    if isinstance(v, Entry):
        return f"{v.index}@{v.term}:{v.kind}" + (f":{v.data.decode()}" if v.kind == "normal" else "")
    if isinstance(v, ConfState):
        return f"voters:{','.join(v.voters)}" + (f"+learners:{','.join(v.learners)}" if v.learners else "")
    if isinstance(v, bytes):
        return repr(v.decode())
    if isinstance(v, tuple):
        return "[" + " ".join(fmt_value(x) for x in v) + "]"
    return str(v)


def fmt_msg(src, dst, m):
    fields = " ".join(f"{name}={fmt_value(getattr(m, name))}" for name, _ in m.SCHEMA if name != "source")
    return f"{src}->{dst} {type(m).__name__} {fields}"


def fmt_disk(c, nid):
    snap, incoming = c.disks[nid].snapshot, c.nodes[nid]._incoming
    saved = f"{snap.index}@{snap.term}:{fmt_value(snap.data)}" if snap else "none"
    receiving = f"{len(incoming.data)}/{incoming.key[-1]} bytes of {incoming.key[2]}" if incoming else "nothing"
    return f"snapshot={saved} restored={[s.index for s in c.restored[nid]]} receiving={receiving}"


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
            budget = int(args[0]) if args else None
            while c.queue and budget != 0:
                budget = None if budget is None else budget - 1
                src, dst, msg = c.queue.pop(0)
                if (src, dst) in c.cut or dst in c.down:
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
        elif cmd == "tick":
            c.nodes[args[0]].tick(c.now)
            c.flush()
        elif cmd == "drop":
            src, dst = args
            at = next(k for k, (s, d, _) in enumerate(c.queue) if (s, d) == (src, dst))
            out.append(f"  dropped {fmt_msg(*c.queue.pop(at))}")
        elif cmd == "compact":
            node = c.nodes[args[0]]
            image = args[1].encode() if len(args) > 1 else b"state@%d" % node.log.applied
            node.compact(c.now, node.log.applied, image)
            c.flush()
        elif cmd == "crash":
            c.crash(args[0])
        elif cmd == "restart":
            c.restart(args[0])
        elif cmd == "disk":
            out.append("  " + fmt_disk(c, args[0]))
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
