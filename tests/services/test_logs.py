"""`service logs` from every node: the time-indexed task logs, the bounded wire replies, paging,
tails, gathering over a (fake) network with dead and silent nodes, the API and the CLI."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from types import SimpleNamespace

import msgpack
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pswarm import wire
from p2pswarm.api.routes import Router
from p2pswarm.api.server import HttpError
from p2pswarm.cli import service_cmds
from p2pswarm.cli.main import main
from p2pswarm.cluster import commands as cmd
from p2pswarm.cluster.spec import ServiceSpec
from p2pswarm.logs import service as logs_mod
from p2pswarm.logs.messages import ALL, MAX_REPLY_BYTES, LogChunk, LogCursor, LogLine, LogsReply, LogsRequest
from p2pswarm.logs.service import LocalTask, LogsService, answer, decode_cursor, encode_cursor
from p2pswarm.runtime import retention
from p2pswarm.runtime.logs import MAX_LINE_BYTES, LogReader, RotatingLog

from .test_service_routes import FakeDriver, call


def clock(start=1000.0, step=0.5):
    ticks = itertools.count(start, step)
    return lambda: next(ticks)


def write_task(folder: Path, out=(), err=(), tick=None, max_bytes=10_000, keep=3):
    folder.mkdir(parents=True, exist_ok=True)
    tick = tick or clock()
    logs = {s: RotatingLog(folder / f"{s}.log", max_bytes, keep, clock=tick) for s in ("stdout", "stderr")}
    for stream, data in (("stdout", out), ("stderr", err)):
        for chunk in data:
            logs[stream].write(chunk)
    for log in logs.values():
        log.close()


def task(folder: Path, tid="1.0", slot=1, final=False) -> LocalTask:
    return LocalTask(tid, slot, final, {s: folder / f"{s}.log" for s in ("stdout", "stderr")})


def request(tail=ALL, cursors=(), max_bytes=MAX_REPLY_BYTES, service="web"):
    return LogsRequest(7, "me", service, tail, max_bytes, tuple(cursors))


def texts(reply):
    return [(c.stream, line.text) for c in reply.chunks for line in c.lines]


# ------------------------------------------------------------------ the files


def test_offsets_survive_rotation_and_lines_keep_their_arrival_time(tmp_path):
    tick = clock()
    log = RotatingLog(tmp_path / "stdout.log", 100, 3, clock=tick)
    for i in range(40):
        log.write(f"line {i:02d}\n".encode())  # 8 bytes a line, 12 a file
    log.write(b"no newline yet")
    log.flush()
    view = LogReader().stream(tmp_path / "stdout.log", 3)
    assert (view.start, view.end) == (96, 40 * 8 + 14)  # 4 files of 12 lines were written, 3 are kept
    lines, nxt, more = view.lines(view.start, 10_000, final=False)
    assert [t for _, _, t in lines][-1] == "line 39" and nxt == 320 and not more
    assert all(offset == int(text[5:]) * 8 for offset, _, text in lines)  # stream offsets, not file offsets
    assert [at for _, at, _ in lines] == [1000.0 + 0.5 * int(t[5:]) for _, _, t in lines]
    lines, nxt, _ = view.lines(320, 10_000, final=True)
    assert [t for _, _, t in lines] == ["no newline yet"] and nxt == view.end
    starts, after = view.tail(2, final=False)
    assert [s for s, _ in starts] == [304, 312] and after == 320
    starts, after = view.tail(2, final=True)
    assert [s for s, _ in starts] == [312, 320] and after == view.end
    log.close()


def test_a_reopened_log_keeps_counting_and_long_lines_come_in_pieces(tmp_path):
    path = tmp_path / "stdout.log"
    log = RotatingLog(path, 50_000, 2, clock=clock())
    log.write(b"a" * (MAX_LINE_BYTES + 10) + b"\nshort\n")
    log.close()
    log = RotatingLog(path, 50_000, 2, clock=clock(2000.0))  # the task runs again (a new spec version)
    log.write(b"again\n")
    log.close()
    view = LogReader().stream(path, 2)
    lines, nxt, more = view.lines(0, 10 * MAX_LINE_BYTES, final=False)
    assert [len(t) for _, _, t in lines] == [MAX_LINE_BYTES, 10, 5, 5]
    assert lines[-1][1] == 2000.0 and nxt == view.end and not more


def test_the_index_stays_bounded_by_rotating_early(tmp_path):
    path = tmp_path / "stdout.log"
    log = RotatingLog(path, 40_000, 2, clock=clock(step=1.0))  # index cap: 10 kB
    for _ in range(2000):
        log.write(b"x\n")  # one mark per write: the index outgrows the log
    log.close()
    files = {p.name: p.stat().st_size for p in tmp_path.iterdir()}
    assert files["stdout.idx"] <= 10_000 + 64 and files["stdout.idx.1"] <= 10_000 + 64
    view = LogReader().stream(path, 2)
    lines, _, _ = view.lines(view.start, 1 << 20, final=False)
    assert len(lines) == (view.end - view.start) // 2 and lines[-1][1] == 1000.0 + 1999


# ------------------------------------------------------------------ answering a request


def test_answer_tails_each_task_over_both_streams_by_time(tmp_path):
    write_task(tmp_path / "t1", out=[b"o1\n", b"o2\n"], err=[b"e1\n", b"e2\n"], tick=clock(step=1.0))
    reply = answer(request(tail=3), "me", [task(tmp_path / "t1")], LogReader(), 3)
    # stdout got times 1000, 1001; stderr 1002, 1003: the last 3 are o2, e1, e2
    assert texts(reply) == [("stdout", "o2"), ("stderr", "e1"), ("stderr", "e2")] and reply.done
    zero = answer(request(tail=0), "me", [task(tmp_path / "t1")], LogReader(), 3)
    assert texts(zero) == [] and {(c.stream, c.next) for c in zero.chunks} == {("stdout", 6), ("stderr", 6)}


def test_a_partial_last_line_waits_for_its_newline_unless_the_task_ended(tmp_path):
    write_task(tmp_path / "t1", out=[b"whole\npart"])
    assert texts(answer(request(), "me", [task(tmp_path / "t1")], LogReader(), 3)) == [("stdout", "whole")]
    ended = answer(request(), "me", [task(tmp_path / "t1", final=True)], LogReader(), 3)
    assert texts(ended) == [("stdout", "whole"), ("stdout", "part")]


def page_all(tasks, reader, max_bytes=MAX_REPLY_BYTES, tail=ALL):
    cursors, seen, pages = {}, [], 0
    while True:
        reply = answer(request(tail, [LogCursor(t, s, o) for (t, s), o in sorted(cursors.items())], max_bytes),
                       "me", tasks, reader, 3)
        data = wire.encode(reply)
        assert len(data) <= MAX_REPLY_BYTES and wire.decode(data) == reply
        for chunk in reply.chunks:
            assert chunk.start == cursors.get((chunk.task, chunk.stream), chunk.start)
            cursors[(chunk.task, chunk.stream)] = chunk.next
            seen += [(chunk.task, chunk.stream, line.text) for line in chunk.lines]
        pages += 1
        if reply.done:
            return seen, pages
        assert pages < 500


def test_replies_stay_under_64_kib_and_paging_returns_every_line_once(tmp_path):
    junk = bytes(range(128, 256)) * 100  # invalid UTF-8: every byte becomes 3 on the wire
    tiny = [b"x\n"] * 30_000
    write_task(tmp_path / "a", out=tiny, err=[junk + b"\n", b"y" * 100_000 + b"\n"], max_bytes=1 << 22)
    write_task(tmp_path / "b", out=[b"%d\n" % i for i in range(5000)], max_bytes=1 << 22)
    tasks = [task(tmp_path / "a", "1.0", 1, final=True), task(tmp_path / "b", "2.0", 2, final=True)]
    seen, pages = page_all(tasks, LogReader())
    assert pages > 3
    assert [t for tid, s, t in seen if tid == "1.0" and s == "stdout"] == ["x"] * 30_000
    assert [t for tid, s, t in seen if tid == "2.0"] == [str(i) for i in range(5000)]
    err = [t for tid, s, t in seen if tid == "1.0" and s == "stderr"]
    assert len(err[0]) == len(junk) and "".join(err[1:]) == "y" * 100_000
    write_task(tmp_path / "c", out=[b"%d\n" % i for i in range(50)] + [b"z" * 40_000], max_bytes=1 << 22)
    few = [task(tmp_path / "c", "3.0", 3, final=True)]
    small, pages = page_all(few, LogReader(), max_bytes=100)  # a tiny budget still makes progress
    assert small == page_all(few, LogReader())[0] and pages > 50
    assert [t for _, _, t in small][:50] == [str(i) for i in range(50)] and "".join(t for _, _, t in small[50:]) == \
        "z" * 40_000


# ------------------------------------------------------------------ the wire


def test_messages_round_trip_and_bad_ones_are_wire_errors():
    req = LogsRequest(1, "n1", "web", 10, 4096, (LogCursor("3.0", "stdout", 5),))
    assert wire.decode(wire.encode(req)) == req
    rep = LogsReply(1, "n2", (LogChunk("3.0", 1, "stderr", 5, 9, (LogLine(1.5, "hi"),)),), False)
    assert wire.decode(wire.encode(rep)) == rep

    def raw(kind, *fields):
        return msgpack.packb([wire.PROTOCOL_VERSION, kind, *fields])

    bad = [
        raw(48, 1, "n1", "web", -2, 10, []),  # tail below ALL
        raw(48, 1, "n1", "web", 10, 0, []),  # no budget
        raw(48, 1, "n1", "web", 10, 10 ** 9, []),  # a budget over the reply limit
        raw(48, 1, "n1", "", 10, 10, []),
        raw(48, 1, "n1", "web", 10, 10, [["t", "stdout", 1], ["t", "stdout", 2]]),  # one stream twice
        raw(48, 1, "n1", "web", 10, 10, [["t", "stdin", 1]]),
        raw(49, 1, "n2", [["t", 1, "stdout", 9, 5, []]], True, ""),  # ends before it starts
        raw(49, 1, "n2", [["t", 1, "stdout", 0, 5, [[0, "x" * MAX_LINE_BYTES]] * 5]], True, ""),  # over budget
        raw(49, 1, "n2", [["t", 1, "stdout", 0, 5, []]] * 2, True, ""),
        raw(49, 1, "n2", [["t", 1, "stdout", 0, 5, [[float("nan"), "x"]]]], True, ""),
    ]
    for data in bad:
        with pytest.raises(wire.WireError):
            wire.decode(data)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.integers(0, 5))
def test_decoding_mangled_logs_messages_raises_only_wire_errors(noise, where):
    rep = LogsReply(1, "n2", (LogChunk("3.0", 1, "stderr", 5, 9, (LogLine(1.5, "hi"),)),), False)
    req = LogsRequest(1, "n1", "web", 10, 4096, (LogCursor("3.0", "stdout", 5),))
    for msg in (rep, req):
        data = wire.encode(msg)
        cut = len(data) * where // 5
        try:
            wire.decode(data[:cut] + noise)
        except wire.WireError:
            pass


def test_cursor_tokens_round_trip_and_junk_is_one_line():
    cursor = {"n1": logs_mod.NodeCursor(True, {("3.0", "stdout"): 12, ("3.0", "stderr"): 0})}
    assert decode_cursor(encode_cursor(cursor)) == cursor
    for junk in ("x", "!!!", encode_cursor(cursor)[:-3], "eJw"):
        with pytest.raises(ValueError, match="not valid"):
            decode_cursor(junk)


# ------------------------------------------------------------------ gathering over the network


class Net:
    """Delivers sends between LogsServices on the running loop (a dropped address: never)."""

    def __init__(self):
        self.services: dict[str, LogsService] = {}
        self.silent: set[str] = set()
        self.sent = []

    def transport(self, me):
        net = self

        class T:
            def send(self, addr, data, bulk=False):
                net.sent.append((me, addr, len(data), bulk))
                if addr not in net.silent:
                    asyncio.get_running_loop().call_soon(net.services[addr].receive, wire.decode(data))
                return True
        return T()


def cluster(tmp_path, dead=(), silent=()):
    """Nodes a (asked), b, c, d: web.1 on a, web.2 on b, web.3 on c (dead), web.4 on d (silent)."""
    driver = FakeDriver()
    run = asyncio.run
    for nid in "abcd":
        run(driver.write_cluster(cmd.update_node("n" + nid, 1.0, nid, name=f"node-{nid}")))
    run(driver.write_cluster(cmd.create_service("c", 1.0, ServiceSpec("web", "x", replicas=4))))
    index = driver.cluster.applied
    run(driver.write_cluster(cmd.assign_tasks("p", 1.0, (1, index), [cmd.placement("web", 1, k, n)
                                                                   for k, n in zip((1, 2, 3, 4), "abcd")])))
    net = Net()
    net.silent |= set(silent)
    statuses = {n: ("dead" if n in dead else "alive") for n in "abcd"}
    members = {n: SimpleNamespace(node=n, addr=n, status=statuses[n], meta=SimpleNamespace(name=f"node-{n}"))
               for n in "abcd"}
    swim = SimpleNamespace(member=members.get)
    nodes = {}
    for n in "abcd":
        folder = tmp_path / n / "tasks"
        runtime = SimpleNamespace(task_dir=lambda tid, f=folder: f / tid, live=set(),
                                  config=SimpleNamespace(log_keep=3),
                                  retired=lambda service, f=folder: retention.retired_tasks(f, service))
        node = SimpleNamespace(node_id=n, swim=swim, transport=net.transport(n), raft_driver=lambda: driver,
                               agent=SimpleNamespace(runtime=runtime), counters=__import__("collections").Counter())
        node.logs = LogsService(node)
        net.services[n] = node.logs
        nodes[n] = node
    for t in driver.cluster.tasks.values():
        base = 1000.0 + t.slot * 0.1
        write_task(tmp_path / t.node / "tasks" / t.id, out=[f"hello from {t.node}\n".encode(), b"bye\n"],
                   err=[f"oops {t.node}\n".encode()], tick=clock(base, 1.0))
    return driver, nodes, net


def test_gather_merges_every_node_by_time_and_warns_about_dead_and_silent_ones(tmp_path, monkeypatch):
    monkeypatch.setattr(logs_mod, "FETCH_TIMEOUT", 0.3)
    driver, nodes, net = cluster(tmp_path, dead="c", silent="d")
    got = asyncio.run(nodes["a"].logs.gather("web"))
    assert [(line["node_name"], line["text"]) for line in got["lines"]] == [
        ("node-a", "hello from a"), ("node-b", "hello from b"), ("node-a", "bye"), ("node-b", "bye"),
        ("node-a", "oops a"), ("node-b", "oops b")]
    assert got["done"] and got["warnings"] == [
        "node node-c is dead: the logs of its tasks are not available",
        "node node-d did not answer within 0.3 s: some logs of its tasks are missing"]
    assert all(bulk for _, _, _, bulk in net.sent) and {(s, a) for s, a, _, _ in net.sent} == {
        ("a", "b"), ("b", "a"), ("a", "d")}

    # follow: nothing new, then a new line on b only
    again = asyncio.run(nodes["a"].logs.gather("web", got["cursor"]))
    assert again["lines"] == []
    tid = next(t.id for t in driver.cluster.tasks.values() if t.node == "b")
    with open(tmp_path / "b" / "tasks" / tid / "stdout.log", "ab") as f:
        f.write(b"later\n")
    later = asyncio.run(nodes["a"].logs.gather("web", again["cursor"]))
    assert [(line["node"], line["slot"], line["stream"], line["text"]) for line in later["lines"]] == [
        ("b", 2, "stdout", "later")]


def test_gather_pages_when_the_budget_runs_out(tmp_path):
    driver, nodes, net = cluster(tmp_path, dead="cd")
    tid = next(t.id for t in driver.cluster.tasks.values() if t.node == "b")
    with open(tmp_path / "b" / "tasks" / tid / "stdout.log", "ab") as f:
        f.writelines(b"%05d\n" % i for i in range(20_000))
    cursor, lines, calls = "", [], 0
    while True:
        got = asyncio.run(nodes["a"].logs.gather("web", cursor, budget=100_000))
        lines += [line["text"] for line in got["lines"] if line["node"] == "b" and line["stream"] == "stdout"]
        cursor, calls = got["cursor"], calls + 1
        if got["done"]:
            break
    assert calls > 2 and lines == ["hello from b", "bye"] + ["%05d" % i for i in range(20_000)]


def test_requests_from_strangers_are_not_answered(tmp_path):
    driver, nodes, net = cluster(tmp_path)
    nodes["b"].logs.receive(LogsRequest(1, "zz", "web", ALL, 1000, ()))  # not a member
    nodes["b"].logs.receive(LogsReply(99, "c"))  # nobody asked
    assert net.sent == [] and nodes["b"].counters["logs_requests_refused"] == 1
    assert nodes["b"].counters["logs_unexpected_replies"] == 1


# ------------------------------------------------------------------ API and CLI


def test_the_api_and_the_cli_print_docker_like_lines(tmp_path, monkeypatch):
    driver, nodes, net = cluster(tmp_path, dead="cd")
    router = Router(nodes["a"])
    got = call(router, "GET", "/v1/services/web/logs", query="tail=1")
    assert [line["text"] for line in got["lines"]] == ["oops a", "oops b"]
    with pytest.raises(HttpError) as err:
        call(router, "GET", "/v1/services/web/logs", query="tail=-3")
    assert err.value.status == 400 and "tail" in str(err.value)
    with pytest.raises(HttpError) as err:
        call(router, "GET", "/v1/services/web/logs", query="cursor=zzz")
    assert err.value.status == 400 and "cursor" in str(err.value)
    with pytest.raises(HttpError) as err:
        call(router, "GET", "/v1/services/ghost/logs")
    assert err.value.status == 404

    from .test_node_stack_cli import RouterClient
    monkeypatch.setattr(service_cmds, "_client", lambda data_dir: RouterClient(router))
    out = CliRunner().invoke(main, ["service", "logs", "web", "--timestamps"], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    a1 = next(t.id for t in driver.cluster.tasks.values() if t.node == "a")
    assert out.stdout.splitlines()[0] == f"1970-01-01T00:16:40.100000Z web.1.{a1}@node-a | hello from a"
    assert f"web.1.{a1}@node-a | oops a" in out.stderr
    assert out.stderr.count("warning: node node-c is dead") == 1

    polls = []

    def sleep(seconds):
        polls.append(seconds)
        if len(polls) == 3:
            raise KeyboardInterrupt
    monkeypatch.setattr(service_cmds.time, "sleep", sleep)
    out = CliRunner().invoke(main, ["service", "logs", "web", "-f", "--tail", "0"], catch_exceptions=False)
    assert out.exit_code == 0 and out.stdout == "" and polls == [0.5] * 3
    assert out.stderr.count("warning: node node-c is dead") == 1  # once, not every poll
    out = CliRunner().invoke(main, ["service", "logs", "web", "--tail", "x"])
    assert out.exit_code == 2 and "--tail" in out.stderr


def test_many_tasks_and_a_worst_case_line_still_page_within_the_limit(tmp_path):
    tasks = []
    for i in range(200):  # 400 streams: more than one reply's chunks
        write_task(tmp_path / f"t{i}", out=[b"hi\n"] if i % 2 else [])
        tasks.append(task(tmp_path / f"t{i}", f"{i}.0", i + 1))
    write_task(tmp_path / "junk", out=[bytes(range(128, 256)) * 128 + b"\n"])  # 16 KiB of invalid UTF-8
    tasks.append(task(tmp_path / "junk", "999.0", 999))
    seen, pages = page_all(tasks, LogReader())
    assert pages >= 2 and len([t for tid, _, t in seen if t == "hi"]) == 100
    assert [len(t) for tid, _, t in seen if tid == "999.0"] == [MAX_LINE_BYTES]


def test_the_wire_and_the_files_agree_on_line_sizes():
    from p2pswarm.logs import messages as logs_messages
    from p2pswarm.runtime import logs as files
    assert logs_messages.MAX_LINE_CHARS == files.MAX_LINE_BYTES and logs_messages.LINE_OVERHEAD == files.LINE_OVERHEAD
    from ..test_purity import violations  # the messages are a pure module, as the other wire modules
    assert violations(Path(logs_messages.__file__).read_text()) == []
