"""A worker's API answers calls that need the Raft state through a Raft member (issue 15).

Two routers in one process: the member's over a cluster state that holds a service, the worker's over
the empty replica a worker has.  Calls travel between their forwarders through the real wire encoding.
"""

from __future__ import annotations

import asyncio
import json
import time
from types import SimpleNamespace

import pytest

from p2pswarm import wire
from p2pswarm.api.forward import ApiForwarder, _answer_of
from p2pswarm.api.messages import ApiCall
from p2pswarm.api.routes import Router
from p2pswarm.api.server import HttpError, Request
from p2pswarm.assignments.core import choose_server
from p2pswarm.cluster import commands as cmd
from p2pswarm.cluster.spec import ServiceSpec

from ..services.test_service_routes import FakeDriver


def node(node_id: str) -> tuple[SimpleNamespace, FakeDriver]:
    driver = FakeDriver()
    return SimpleNamespace(raft_driver=lambda: driver, agent=None, node_id=node_id, security=None, logs=None,
                           port_errors=dict, own_ports=dict, info=lambda: {"id": node_id}), driver


class Pair:
    """Member ``m1`` and worker ``w1``; ``down`` drops everything sent to it (a member that never answers)."""

    def __init__(self, members: list[str] = ["m1"], member_is_worker: bool = False, timeout: float = 5.0):
        self.down: set[str] = set()
        self.dead: set[str] = set()
        """Members the worker's SWIM has declared dead (its list of Raft members may still name them)."""
        (member, self.state), (worker, self.worker_state) = node("m1"), node("w1")
        asyncio.run(self.state.write_cluster(cmd.create_service("c1", 1.0, ServiceSpec("web", "srv"))))
        self.forwarders = {
            name: ApiForwarder(Router(member), name, is_worker=lambda: member_is_worker, members=lambda: [],
                               is_peer=lambda n: True, send=self.send, timeout=timeout)
            for name in members or ["m1"]}  # every member answers from the same state
        self.forwarders["w1"] = ApiForwarder(Router(worker), "w1", is_worker=lambda: True, members=lambda: members,
                                             is_peer=lambda n: n not in self.dead, send=self.send, timeout=timeout)

    def send(self, to: str, msg) -> bool:
        if to not in self.down:
            data = wire.encode(msg)
            asyncio.get_running_loop().call_soon(self.forwarders[to].receive, wire.decode(data))
        return True

    def call(self, method: str, path: str, body=None, role: str = "local"):
        request = Request(method, path, {}, b"" if body is None else json.dumps(body).encode(), role=role)
        response = asyncio.run(self.forwarders["w1"](request))
        return response.status, json.loads(response.body)


def test_service_ls_and_create_on_a_worker_are_answered_by_a_member():
    pair = Pair()
    own = asyncio.run(_answer_of(pair.forwarders["w1"].inner, Request("GET", "/v1/services", {})))
    assert json.loads(own.body) == {"services": []}  # what the worker's own empty replica says
    status, body = pair.call("GET", "/v1/services")
    assert status == 200 and [s["name"] for s in body["services"]] == ["web"]
    spec = ServiceSpec("api", "srv", replicas=2).to_dict()
    assert pair.call("POST", "/v1/services", {"spec": spec}) == (200, {"name": "api", "version": 1})
    assert "api" in pair.state.cluster.services and not pair.worker_state.cluster.services  # written at the member
    status, body = pair.call("GET", "/v1/services/api")
    assert status == 200 and body["desired"] == 2
    assert pair.call("GET", "/v1/services/ghost")[0] == 404  # the member's errors come back as they are
    assert pair.forwarders["w1"].counters["forwarded"] == 4


def test_node_local_calls_stay_on_the_worker_and_a_member_serves_only_forwarded_endpoints():
    pair = Pair()
    worker = pair.forwarders["w1"]
    assert json.loads(asyncio.run(worker(Request("GET", "/v1/info", {}))).body) == {"id": "w1"}  # its own
    # a call outside the forwarded endpoints, sent to a member by hand, is refused there

    async def ask(call):
        answer = asyncio.get_running_loop().create_future()
        worker._waiting[call.call] = ("m1", answer)
        pair.forwarders["m1"].receive(call)
        return await asyncio.wait_for(answer, 2)
    shutdown = asyncio.run(ask(ApiCall(901, "w1", "POST", "/v1/shutdown", "", b"", "local", "local")))
    assert shutdown.status == 403 and b"not answered for other nodes" in shutdown.body
    create = ApiCall(902, "w1", "POST", "/v1/services", "", b"{}", "cli-ro", "read-only")
    refused = asyncio.run(ask(create))  # a remote read-only client of the worker cannot write through a member
    assert refused.status == 403 and b"needs the operator role" in refused.body
    assert worker.counters["forwarded"] == 0


@pytest.mark.parametrize("case,words", [
    ("no member", "no Raft member is reachable"),
    ("silent member", "did not answer GET /v1/services within 0.2 s"),
    ("member became a worker", "not a Raft member"),
])
def test_a_worker_without_an_answering_member_says_so_in_one_line(case, words):
    pair = Pair(members=[] if case == "no member" else ["m1"], member_is_worker=case == "member became a worker",
                timeout=0.2)
    if case == "silent member":
        pair.down.add("m1")
    try:
        status, body = pair.call("GET", "/v1/services")
    except HttpError as exc:
        status, body = exc.status, {"error": str(exc)}
    assert status == 503 and words in body["error"] and "\n" not in body["error"]


def test_a_member_dying_mid_call_moves_a_read_to_the_next_member_and_fails_a_write_at_once():
    pair = Pair(members=["m1", "m2"], timeout=20.0)
    first = choose_server("w1", ["m1", "m2"])
    pair.down.add(first)
    pair.dead.add(first)  # crashed after the worker chose it: SWIM says so long before the 20 s timeout
    started = time.monotonic()
    status, body = pair.call("GET", "/v1/services")
    assert status == 200 and [s["name"] for s in body["services"]] == ["web"]
    with pytest.raises(HttpError) as err:
        pair.call("POST", "/v1/services", {"spec": ServiceSpec("api", "srv").to_dict()})
    assert err.value.status == 503 and "left the cluster before answering POST /v1/services" in str(err.value)
    assert "outcome is unknown" in str(err.value) and time.monotonic() - started < 10
    assert pair.forwarders["w1"].counters["forward_member_lost"] == 2
