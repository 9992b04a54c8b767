"""How a task runs: image, network, user, limits, stop signal, mounts, secrets and configs in the spec."""

from __future__ import annotations

import msgpack
import pytest

from p2pswarm.cluster.spec import FileRef, Mount, ServiceSpec, SpecError
from p2pswarm.cluster.workload import parse_signal


def image_spec(**changes) -> ServiceSpec:
    return ServiceSpec("web", "", image="nginx:1.27", **changes)


def test_an_image_service_needs_no_command_and_runs_the_images_own():
    spec = image_spec()
    assert spec.argv == ()
    assert spec.network_mode == "bridge"
    assert ServiceSpec("p", "/bin/true").network_mode == "host"


def test_a_spec_without_the_new_fields_encodes_as_before():
    """Specs stored before containers existed must encode (and so compare and hash) exactly as they did."""
    data = ServiceSpec("api", "python3", args=("app.py",)).to_dict()
    assert not {"image", "network", "user", "limit_cpu", "limit_memory", "limit_pids", "stop_signal", "stop_grace",
                "mounts", "secrets", "configs"} & data.keys()


def test_every_workload_field_survives_the_log_codec():
    spec = image_spec(network="host", user="1000:1000", limit_cpu=0.5, limit_memory=64 << 20, limit_pids=50,
                      stop_signal="int", stop_grace=3, mounts=("type=volume,source=data,target=/data",
                                                                "type=bind,src=/srv/www,dst=/www,ro"),
                      secrets=("db-password", "source=tls,target=tls.key,mode=0440"),
                      configs=("source=site,target=/etc/nginx/conf.d/site.conf",))
    wire = msgpack.unpackb(msgpack.packb(spec.to_dict()), raw=False)
    assert ServiceSpec.from_dict(wire) == spec
    assert spec.stop_signal == "SIGINT"
    assert spec.mounts[1] == Mount("bind", "/srv/www", "/www", readonly=True)
    assert spec.secrets == (FileRef("db-password", "db-password", 0o400), FileRef("tls", "tls.key", 0o440))
    assert spec.configs[0].file_name() == "site.conf" and spec.configs[0].mode == 0o444


def test_a_change_to_how_a_task_runs_replaces_the_tasks_and_a_replica_count_does_not():
    spec = image_spec(limit_memory=64 << 20)
    assert not spec.runs_like(spec.replace(limit_memory=128 << 20))
    assert not spec.runs_like(spec.replace(secrets=("db",)))
    assert spec.runs_like(spec.replace(replicas=5))


BAD = [
    (dict(command="", image=None), "command:"),
    (dict(command="", args=("x",)), "args: arguments need a command"),
    (dict(image="Nginx Latest"), "image: must be an image reference"),
    (dict(command="/bin/sh", network="bridge", image=None), "network: bridge is for image"),
    (dict(network="overlay"), "network: must be one of host, bridge"),
    (dict(user="root; rm -rf /"), "user:"),
    (dict(limit_memory=1 << 20), "limit_memory: must be at least 6M"),
    (dict(limit_cpu=0.001), "limit_cpu:"),
    (dict(limit_pids=-1), "limit_pids:"),
    (dict(reserve_memory=256 << 20, limit_memory=128 << 20), "reserve_memory: must not be above limit_memory"),
    (dict(stop_signal="SIGNOPE"), "stop_signal:"),
    (dict(stop_grace=-1), "stop_grace:"),
    (dict(mounts=("type=bind,source=relative/dir,target=/x",)), "mounts.source: must be an absolute path"),
    (dict(mounts=("type=volume,source=data,target=/a/../../etc",)), "mounts.target:"),
    (dict(mounts=("type=volume,source=data,target=/",)), "mounts.target:"),
    (dict(mounts=("type=tmpfs,source=x,target=/x",)), "mounts.type:"),
    (dict(mounts=("type=volume,target=/x",)), "mounts: source= is required"),
    (dict(mounts=("type=volume,source=a,target=/x", "type=volume,source=b,target=/x")), "mounts: each target"),
    (dict(secrets=("source=db,target=/etc/passwd",)), "secrets.target:"),
    (dict(secrets=("source=db,mode=rw",)), "secrets.mode:"),
    (dict(secrets=("db", "source=other,target=db")), "secrets: each target"),
    (dict(configs=("source=a,target=/x/app.conf", "source=b,target=/y/app.conf")), "configs: each target"),
    (dict(secrets=("../../key",)), "secrets.name:"),
]


@pytest.mark.parametrize("change,prefix", BAD, ids=[p for _, p in BAD])
def test_bad_workload_input_is_one_clear_line(change, prefix):
    kwargs = {"name": "web", "command": "", "image": "nginx", **change}
    with pytest.raises(SpecError) as info:
        ServiceSpec(**kwargs)
    message = str(info.value)
    assert "\n" not in message and len(message) < 200
    assert message.startswith(prefix), message


def test_a_bad_nested_field_in_a_stored_spec_names_its_place():
    data = {**image_spec().to_dict(), "mounts": [{"type": "volume", "source": "d", "target": "/d", "size": 1}]}
    with pytest.raises(SpecError, match=r"^mounts: unknown field 'size'"):
        ServiceSpec.from_dict(data)


@pytest.mark.parametrize("given,name", [("SIGTERM", "SIGTERM"), ("term", "SIGTERM"), ("2", "SIGINT"),
                                        (" SIGQUIT ", "SIGQUIT"), ("SIGUSR1", "SIGUSR1")])
def test_stop_signals_are_stored_by_name(given, name):
    assert parse_signal(given) == name


@pytest.mark.parametrize("given", ["SIG_DFL", "999", "", "KILLME", True])
def test_bad_stop_signals_are_refused(given):
    with pytest.raises(SpecError, match="stop_signal"):
        parse_signal(given)
