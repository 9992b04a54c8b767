"""Several nodes in one process (p2pswarm/testing/multinode.py): the spec file it reads, and the log
lines of each node tagged with that node's name (p2pswarm/node/logtag.py). The host itself runs in
tests/simulations/test_bench_smoke.py (bench_scale --quick puts three nodes in one process)."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from p2pswarm.node.daemon import Node, NodeOptions
from p2pswarm.node.logtag import NODE, NodeTag
from p2pswarm.testing.multinode import SpecError, main, read_spec


def test_the_spec_gives_each_node_its_options_and_joiners_the_token(tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"log_level": "debug", "nodes": [
        {"data_dir": str(tmp_path / "a"), "bind": "127.0.0.2:7000", "name": "a"},
        {"data_dir": str(tmp_path / "b"), "bind": "127.0.0.3:7000", "name": "b", "peers": ["127.0.0.2:7000"],
         "labels": [["zone", "z1"]], "max_learners": 1}]}))
    level, (first, second) = read_spec(spec, "P2PS-1-secret")
    assert level == "debug"
    assert first.token is None and first.peers == ()
    assert second == NodeOptions(data_dir=str(tmp_path / "b"), bind="127.0.0.3:7000", name="b",
                                 peers=("127.0.0.2:7000",), labels=(("zone", "z1"),), max_learners=1,
                                 token="P2PS-1-secret")


@pytest.mark.parametrize("text, why", [
    ('{"nodes": [{"bind": "127.0.0.2:7000", "colour": "red"}]}', "unknown node option(s) colour"),
    ('{"nodes": []}', "'nodes' must be a non-empty list"),
    ("{not json", "cannot read the node spec"),
])
def test_a_bad_spec_is_one_line_and_exit_2(tmp_path, capsys, text, why):
    spec = tmp_path / "spec.json"
    spec.write_text(text)
    with pytest.raises(SpecError, match=why.replace("(", r"\(").replace(")", r"\)")):
        read_spec(spec, None)
    assert main([str(spec)]) == 2
    err = capsys.readouterr().err
    assert why in err and err.count("\n") == 1


def test_a_node_of_a_shared_process_leaves_the_signals_to_its_host():
    assert Node(NodeOptions(), handle_signals=False).handle_signals is False
    assert Node(NodeOptions()).handle_signals is True


def test_each_nodes_log_lines_carry_its_name(caplog):
    log = logging.getLogger("p2pswarm.test.multinode")

    async def node(name: str) -> None:
        NODE.set(name)
        await asyncio.sleep(0)  # the other node runs in between: its name must not leak into ours
        log.info("hello from %s", name)
        await asyncio.to_thread(log.info, "thread of %s", name)

    async def both() -> None:
        await asyncio.gather(node("n1"), node("n2"))
    caplog.handler.addFilter(NodeTag())
    with caplog.at_level(logging.INFO, logger="p2pswarm.test.multinode"):
        asyncio.run(both())
        log.info("the host itself")
    tagged = {(r.node, r.getMessage()) for r in caplog.records}
    assert tagged == {("n1", "hello from n1"), ("n2", "hello from n2"), ("n1", "thread of n1"),
                      ("n2", "thread of n2"), ("-", "the host itself")}
