"""`GET /v1/events` on a node's history: paging by cursor, filters, following from now, bad input in one line."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from p2pswarm.api.routes import Router
from p2pswarm.api.server import HttpError
from p2pswarm.events.derive import make
from p2pswarm.events.host import EventsHost

from ..services.test_service_routes import call


@pytest.fixture
def node(tmp_path):
    host = EventsHost(tmp_path / "events.log", None, wall=lambda: 2000.0)
    host.history.add([make("service", "create", "web", 1000.0, 3)], 3)
    host.history.add([make("task", "assigned", "3.0", 1001.0, 4), make("task", "running", "3.0", 1002.0, 4)], 4)
    host.member("n2", "two", "alive", "suspect")
    return SimpleNamespace(events=host, name="n1", raft_driver=lambda: None, agent=None, logs=None, security=None)


def test_pages_filters_and_a_cursor_that_follows(node):
    router = Router(node)
    got = call(router, "GET", "/v1/events", query="since=0")
    assert [(e["seq"], e["action"], e["local"]) for e in got["events"]] == [
        (1, "create", False), (2, "assigned", False), (3, "running", False), (4, "suspect", True)]
    assert got["cursor"] == 4 and got["node"] == "n1"
    tasks = call(router, "GET", "/v1/events", query="since=1970-01-01T00:16:41Z&until=1002&type=task")
    assert [e["action"] for e in tasks["events"]] == ["assigned", "running"]
    now = call(router, "GET", "/v1/events")  # no --since: nothing old, the cursor to follow from
    assert now == {"events": [], "cursor": 4, "more": False, "node": "n1"}
    node.events.history.add([make("service", "scale", "web", 1003.0, 5)], 5)
    later = call(router, "GET", "/v1/events", query=f"after={now['cursor']}")
    assert [e["action"] for e in later["events"]] == ["scale"] and later["cursor"] == 5


@pytest.mark.parametrize("query, message", [
    ("since=yesterday", "since: 'yesterday' is not a time: use RFC 3339"),
    ("type=container", "type: expected one of service, task, node, raft, cluster, got 'container'"),
    ("after=-1", "after must be the cursor the previous call returned"),
])
def test_bad_input_is_one_line(node, query, message):
    with pytest.raises(HttpError) as err:
        call(Router(node), "GET", "/v1/events", query=query)
    assert err.value.status == 400 and str(err.value).startswith(message) and "\n" not in str(err.value)
