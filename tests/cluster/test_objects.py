"""Secrets and configs in the cluster state: created once, named by services, never removed while in use."""

from __future__ import annotations

import msgpack
import pytest

from p2pswarm.cluster import commands as cmd
from p2pswarm.cluster.objects import MAX_DATA, SEAL_OVERHEAD, SEALED_MAGIC
from p2pswarm.cluster.spec import ServiceSpec
from p2pswarm.cluster.state import ClusterState

from .test_state import Log

SEALED = SEALED_MAGIC + bytes(12) + b"ciphertext" + bytes(16)
"""Looks sealed to the state machine (which cannot and need not open it)."""


def secret(log: Log, name: str, object_id: str = "", data: bytes = SEALED):
    return log(cmd.create_secret(log.cid(), 5.0, name, object_id or f"{name.replace('-', '')}00000000", data, 1,
                                 {"team": "db"}))


def config(log: Log, name: str, data: bytes = b"listen 80;"):
    return log(cmd.create_config(log.cid(), 5.0, name, f"{name.replace('-', '')}11111111", data))


@pytest.fixture
def log() -> Log:
    log = Log()
    assert secret(log, "db-pass").ok and config(log, "nginx").ok
    return log


def web(**kw) -> ServiceSpec:
    return ServiceSpec("web", "srv", **{"secrets": ("db-pass",), "configs": ("nginx",), **kw})


def test_create_then_list_without_data(log):
    result = secret(log, "api-key")
    assert result.ok and result.value == {"id": "apikey00000000", "version": log.index}
    rows = log.state.object_summaries("secret")
    assert [r["name"] for r in rows] == ["api-key", "db-pass"]
    assert rows[0] == {"name": "api-key", "id": "apikey00000000", "version": log.index, "created_at": 5.0,
                       "labels": {"team": "db"}, "size": len(SEALED) - SEAL_OVERHEAD, "services": []}
    assert "data" not in rows[0]
    assert log.state.objects.find("config", "nginx11111111").name == "nginx"  # by id too


def test_duplicates_and_bad_commands_are_refused_in_one_line(log):
    assert "secret db-pass already exists" in secret(log, "db-pass").error
    assert "config nginx already exists" in config(log, "nginx").error
    assert "id dbpass00000000 is already taken" in secret(log, "other", "dbpass00000000").error
    refused = [
        secret(log, "clear", data=b"hunter2"),
        secret(log, "-bad"),
        config(log, "big", b"x" * (MAX_DATA + 1)),
        config(log, "empty", b""),
        log(cmd.remove_secret(log.cid(), 6.0, "ghost")),
    ]
    assert [r.ok for r in refused] == [False] * 5
    assert "refusing data in clear" in refused[0].error
    assert refused[1].error.startswith("name: must be 1-64 letters")
    assert refused[2].error.startswith(f"data: must be 1 to {MAX_DATA} bytes")
    assert refused[4].error == "secret ghost does not exist (see `p2pswarm secret ls`)"
    assert all("\n" not in r.error for r in refused)


def test_a_service_may_only_name_objects_that_exist(log):
    missing = log(cmd.create_service(log.cid(), 7.0, web(secrets=("nope",))))
    assert not missing.ok and missing.error.startswith("secrets: secret nope does not exist")
    assert "web" not in log.state.services
    assert log(cmd.create_service(log.cid(), 7.0, web())).ok
    update = log(cmd.update_service(log.cid(), 8.0, web(configs=("missing-conf",))))
    assert not update.ok and update.error.startswith("configs: config missing-conf does not exist")
    assert log.state.services["web"].version == 1


def test_an_object_in_use_cannot_be_removed_and_rotation_frees_it(log):
    assert log(cmd.create_service(log.cid(), 7.0, web())).ok
    assert log(cmd.create_service(log.cid(), 7.0, ServiceSpec("api", "srv", secrets=("db-pass",)))).ok
    refused = log(cmd.remove_secret(log.cid(), 8.0, "db-pass"))
    assert not refused.ok and refused.error.startswith("secret db-pass is in use by service(s) api, web:")
    assert not log(cmd.remove_config(log.cid(), 8.0, "nginx")).ok
    assert log.state.object_summaries("secret")[0]["services"] == ["api", "web"]
    # rotation: a new secret, the services updated to it, then the old one goes
    assert secret(log, "db-pass-v2").ok
    for name in ("web", "api"):
        spec = log.state.services[name].spec
        assert log(cmd.update_service(log.cid(), 9.0, spec.replace(secrets=("source=db-pass-v2,target=db-pass",)))).ok
    assert log(cmd.remove_secret(log.cid(), 10.0, "db-pass")).ok
    assert "db-pass" not in log.state.objects.secrets
    # the rollback target names the removed secret: a rollback is refused, not half-done
    rollback = log(cmd.rollback_service(log.cid(), 11.0, "web"))
    assert not rollback.ok and "secret db-pass does not exist" in rollback.error


def test_a_spec_version_tasks_still_run_keeps_its_objects(log):
    assert log(cmd.create_service(log.cid(), 7.0, web())).ok
    assert log(cmd.update_node(log.cid(), 7.0, "n1", name="n1")).ok
    old = log.place("web", 1, "n1").value["placed"][0]  # a task of version 1 runs
    assert config(log, "nginx-v2").ok
    assert log(cmd.update_service(log.cid(), 8.0, web(configs=("nginx-v2",)))).ok
    refused = log(cmd.remove_config(log.cid(), 9.0, "nginx"))
    assert not refused.ok and "in use by service(s) web" in refused.error
    assert log(cmd.set_task_desired(log.cid(), 9.0, [old], "shutdown")).ok  # the update replaced it
    assert log(cmd.remove_config(log.cid(), 10.0, "nginx")).ok  # only a rollback could still want it


def test_snapshot_round_trip_and_older_snapshots(log):
    assert log(cmd.create_service(log.cid(), 7.0, web())).ok
    blob = log.state.snapshot()
    copy = ClusterState()
    copy.restore(blob)
    assert copy.snapshot() == blob
    assert copy.objects.secrets == log.state.objects.secrets and copy.objects.configs == log.state.objects.configs
    assert not copy.apply(cmd.remove_secret("x", 9.0, "db-pass"), 1, log.index + 1).ok  # still in use
    old = msgpack.unpackb(blob, raw=False)
    del old["secrets"], old["configs"]  # a snapshot written before secrets existed
    older = ClusterState()
    older.restore(msgpack.packb(old, use_bin_type=True))
    assert older.objects.secrets == {} and older.objects.configs == {} and "web" in older.services
