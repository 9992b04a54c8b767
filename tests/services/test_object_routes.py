"""The secrets and configs API against an in-memory cluster state: sealed on the way in, never shown."""

from __future__ import annotations

import asyncio
import base64
from types import SimpleNamespace

import pytest

from p2pswarm.agent.files import TaskFileSource
from p2pswarm.agent.host import assignments
from p2pswarm.api.object_routes import PLAINTEXT
from p2pswarm.api.routes import Router
from p2pswarm.api.server import HttpError
from p2pswarm.cluster import commands as cmd
from p2pswarm.cluster.objects import MAX_DATA
from p2pswarm.cluster.spec import ServiceSpec
from p2pswarm.security.secretbox import open_secret, seal_secret

from .test_service_routes import FakeDriver, call

CLEAR = b"s3cret-value"
KEY = bytes(range(32))


class FakeKeyring:
    """Seals with one fixed key, as the node's keyring seals with the cluster's newest key."""

    def __init__(self) -> None:
        self.opened: list[str] = []

    async def seal(self, driver, name, object_id, data):
        return seal_secret(KEY, bytes(12), name, object_id, data), 1

    def open(self, rec, secret):
        self.opened.append(secret.name)
        return open_secret(KEY, secret.name, secret.id, secret.data)


def router_for(security) -> Router:
    driver = FakeDriver()
    asyncio.run(driver.write_cluster(cmd.update_node("n", 1.0, "node-a", name="a")))
    node = SimpleNamespace(raft_driver=lambda: driver, agent=None, node_id="node-a", security=security, logs=None,
                           own_ports=dict)
    return Router(node)


@pytest.fixture
def router():
    return router_for(SimpleNamespace(keyring=FakeKeyring()))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_a_secret_is_sealed_before_it_is_committed_and_never_shown(router):
    made = call(router, "POST", "/v1/secrets", {"name": "db-pass", "data": b64(CLEAR), "labels": {"app": "db"}})
    assert made["name"] == "db-pass" and len(made["id"]) == 25
    stored = router.node.raft_driver().cluster.objects.secrets["db-pass"]
    assert CLEAR not in stored.data and stored.key == 1
    for view in (call(router, "GET", "/v1/secrets/db-pass"), call(router, "GET", f"/v1/secrets/{made['id']}"),
                 call(router, "GET", "/v1/secrets")["secrets"][0]):
        assert "data" not in view and b64(CLEAR) not in str(view) and CLEAR.decode() not in str(view)
        assert (view["name"], view["size"], view["labels"]) == ("db-pass", len(CLEAR), {"app": "db"})


def test_configs_show_their_data_and_work_in_a_plaintext_cluster():
    plain = router_for(None)
    call(plain, "POST", "/v1/configs", {"name": "nginx", "data": b64(b"listen 80;")})
    assert base64.b64decode(call(plain, "GET", "/v1/configs/nginx")["data"]) == b"listen 80;"
    with pytest.raises(HttpError) as err:
        call(plain, "POST", "/v1/secrets", {"name": "db", "data": b64(CLEAR)})
    assert err.value.status == 409 and str(err.value) == PLAINTEXT


def test_in_use_removal_and_bad_input_are_one_line(router):
    call(router, "POST", "/v1/secrets", {"name": "db", "data": b64(CLEAR)})
    call(router, "POST", "/v1/services", {"spec": ServiceSpec("web", "srv", secrets=("db",)).to_dict()})
    cases = [
        ("DELETE", "/v1/secrets/db", None, 400, "secret db is in use by service(s) web"),
        ("GET", "/v1/secrets/ghost", None, 404, "secret ghost does not exist"),
        ("POST", "/v1/secrets", {"name": "db", "data": b64(b"x")}, 409, "secret db already exists"),
        ("POST", "/v1/secrets", {"name": "x/y", "data": b64(b"x")}, 400, "name: must be 1-64"),
        ("POST", "/v1/configs", {"name": "c", "data": "not base64!"}, 400, "in base64"),
        ("POST", "/v1/configs", {"name": "c", "data": b64(b"x" * (MAX_DATA + 1))}, 400, "1 to 512000 bytes"),
        ("POST", "/v1/services", {"spec": ServiceSpec("api", "srv", configs=("nope",)).to_dict()}, 400,
         "configs: config nope does not exist"),
    ]
    for method, path, body, status, words in cases:
        with pytest.raises(HttpError) as err:
            call(router, method, path, body)
        assert err.value.status == status and words in str(err.value) and "\n" not in str(err.value), path
    call(router, "DELETE", "/v1/services/web")
    assert call(router, "DELETE", "/v1/secrets/db")["removed"] == "db"
    assert call(router, "GET", "/v1/secrets") == {"secrets": []}


def test_only_this_nodes_running_tasks_get_their_secrets_opened(router):
    driver = router.node.raft_driver()
    call(router, "POST", "/v1/secrets", {"name": "db", "data": b64(CLEAR)})
    call(router, "POST", "/v1/secrets", {"name": "other", "data": b64(b"not for us")})
    call(router, "POST", "/v1/configs", {"name": "conf", "data": b64(b"k=v")})
    call(router, "POST", "/v1/services", {"spec": ServiceSpec("web", "srv", replicas=2, secrets=("db",),
                                                              configs=("conf",)).to_dict()})
    call(router, "POST", "/v1/services", {"spec": ServiceSpec("api", "srv", secrets=("other",)).to_dict()})
    asyncio.run(driver.write_cluster(cmd.update_node("n2", 1.0, "node-b", name="b")))
    basis = [1, driver.cluster.applied]
    place = [cmd.placement("web", 1, 1, "node-a"), cmd.placement("web", 1, 2, "node-a"),
             cmd.placement("api", 1, 1, "node-b")]
    assert asyncio.run(driver.write_cluster(cmd.assign_tasks("p", 2.0, basis, place))).ok
    keyring = router.node.security.keyring
    source = TaskFileSource(lambda secret: keyring.open(None, secret))
    mine = assignments(driver.cluster, "node-a", source)
    assert len(mine) == 2 and keyring.opened == ["db"]  # node-b's secret is never opened here
    files = {(f.kind, f.ref.name): f.data for f in mine[0].spec.files}
    assert files == {("secret", "db"): CLEAR, ("config", "conf"): b"k=v"}
    first = mine[0].spec.task_id
    assert asyncio.run(driver.write_cluster(cmd.set_task_desired("s", 3.0, [first], "shutdown"))).ok
    again = {a.spec.task_id: a.spec.files for a in assignments(driver.cluster, "node-a", source)}
    assert again[first] == () and len(again[mine[1].spec.task_id]) == 2  # a stopping task gets none
    assert keyring.opened == ["db"]  # kept open while a task of this node reads it, not opened again
    asyncio.run(driver.write_cluster(cmd.set_task_desired("s2", 4.0, list(again), "shutdown")))
    assignments(driver.cluster, "node-a", source)
    assert source._opened == {}  # no running task reads it: its clear data is dropped
