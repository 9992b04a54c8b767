"""Compose keys that say how a stack's tasks run: image, command, user, stop, limits, volumes, secrets,
configs and host-mode ports (p2pswarm.cluster.stack / stack_workload): pure, no cluster."""

from __future__ import annotations

import pytest

from p2pswarm.cluster.spec import FileRef, Mount
from p2pswarm.cluster.stack import StackError, parse_yaml, translate
from p2pswarm.cluster.stack_workload import StackObject

FILE = """
services:
  web:
    image: nginx:1.27
    user: "1000:1000"
    stop_signal: INT
    stop_grace_period: 1m30s
    ports: [{target: 80, published: 8080, mode: host}, {target: 81, published: 8081, mode: ingress}]
    volumes:
      - data:/usr/share/nginx/html:ro
      - /srv/logs:/var/log/nginx
      - {type: volume, source: cache, target: /cache}
      - {type: bind, source: /etc/ssl, target: /etc/ssl, read_only: true}
    secrets: [db_password, {source: api_key, target: key.txt, mode: 0440}]
    configs: [site, {source: site, target: /etc/nginx/conf.d/site.conf}]
    deploy:
      resources: {limits: {cpus: "0.5", memory: 128M, pids: 100}, reservations: {memory: 64M}}
  job:
    image: busybox
    command: ["sh", "-c", "echo hi"]
volumes:
  data: {}
  cache: {external: true}
secrets:
  db_password: {file: ./db.txt}
  api_key: {external: true, name: prod_api_key}
configs:
  site: {file: /etc/p2ps/site.conf, name: site_v2}
"""


def stack(text: str, source: str = "deploy/stack.yml"):
    return translate(parse_yaml(text), "shop", source)


def one(text: str):
    [spec] = stack(text).specs
    return spec


def test_an_image_service_without_a_command_runs_the_images_own():
    job, web = stack(FILE).specs
    assert (web.image, web.argv, web.network_mode) == ("nginx:1.27", (), "bridge")
    assert (job.image, job.command, job.args) == ("busybox", "sh", ("-c", "echo hi"))
    assert one("services: {w: {image: busybox, command: sleep 5}}").argv == ("sleep", "5")


def test_user_stop_and_limits_become_the_specs_fields():
    web = stack(FILE).specs[1]
    assert (web.user, web.stop_signal, web.stop_grace) == ("1000:1000", "SIGINT", 90.0)
    assert (web.limit_cpu, web.limit_memory, web.limit_pids, web.reserve_memory) == (0.5, 128 << 20, 100, 64 << 20)
    assert not stack(FILE).warnings


def test_host_mode_ports_are_served_on_the_tasks_node():
    web = stack(FILE).specs[1]
    assert [(p.published, p.target, p.mode) for p in web.ports] == [(8080, 80, "host"), (8081, 81, "ingress")]


def test_volumes_in_both_syntaxes_become_mounts_named_as_docker_does():
    assert stack(FILE).specs[1].mounts == (
        Mount("volume", "shop_data", "/usr/share/nginx/html", True), Mount("bind", "/srv/logs", "/var/log/nginx"),
        Mount("volume", "cache", "/cache"), Mount("bind", "/etc/ssl", "/etc/ssl", True))
    named = one("services: {w: {command: x, volumes: ['d:/d:rw']}}\nvolumes: {d: {name: shared}}\n")
    assert named.mounts == (Mount("volume", "shared", "/d"),)


def test_secrets_and_configs_name_cluster_objects_and_files_are_made_at_deploy():
    out = stack(FILE)
    web = out.specs[1]
    assert web.secrets == (FileRef("shop_db_password", "db_password", 0o400), FileRef("prod_api_key", "key.txt", 0o440))
    assert web.configs == (FileRef("site_v2", "/site", 0o444), FileRef("site_v2", "/etc/nginx/conf.d/site.conf",
                                                                           0o444))
    assert out.objects == [StackObject("secret", "shop_db_password", "deploy/db.txt"),
                           StackObject("config", "site_v2", "/etc/p2ps/site.conf")]
    assert one("services: {w: {command: x, secrets: [{source: s, target: /run/secrets/t}]}}\n"
               "secrets: {s: {external: true}}\n").secrets == (FileRef("s", "t", 0o400),)


@pytest.mark.parametrize("service,top,words", [
    ("volumes: [/data]", "", "anonymous volumes are not supported"),
    ("volumes: [{type: volume, target: /data}]", "", "anonymous volumes are not supported"),
    ("volumes: ['./site:/site']", "", "a bind source must be an absolute path of the nodes"),
    ("volumes: ['data:/data']", "", "volume 'data' is not declared in the top-level volumes"),
    ("volumes: ['data:/data:z']", "volumes: {data: {}}", "the mode must be ro or rw, got 'z'"),
    ("volumes: ['a:b:c:d']", "", "must look like NAME:/path[:ro]"),
    ("volumes: [{type: tmpfs, target: /t}]", "", "type 'tmpfs' is not supported"),
    ("volumes: [{type: bind, source: /s, target: /t, bind: {propagation: shared}}]", "", "'bind' is not supported"),
    ("volumes: ['data:relative']", "volumes: {data: {}}", "volumes: target: must be an absolute path"),
    ("secrets: [pw]", "", "'pw' is not declared in the top-level secrets"),
    ("secrets: [{source: pw, uid: '0'}]", "secrets: {pw: {external: true}}", "uid and gid are not supported"),
    ("secrets: [{source: pw, mode: rw}]", "secrets: {pw: {external: true}}", "secrets.mode: must be octal"),
    ("secrets: [{source: pw, target: /etc/pw}]", "secrets: {pw: {external: true}}", "a secret's target is a file"),
    ("configs: [c]", "configs: {c: {content: hi}}", "only file: and external: are supported"),
    ("configs: [c]", "configs: {c: {}}", "give either file: PATH"),
    ("configs: [c]", "configs: {c: {file: f, external: true}}", "give either file: PATH"),
    ("secrets: [pw]", "secrets: {pw: {environment: PW}}", "values are never taken from the shell"),
    ("volumes: ['d:/d']", "volumes: {d: {driver: nfs}}", "only local volumes exist"),
    ("volumes: ['d:/d']", "volumes: {d: {driver_opts: {type: nfs}}}", "'driver_opts' is not supported"),
    ("ports: [{published: 80, target: 80, mode: global}]", "", "the mode must be ingress or host"),
    ("deploy: {resources: {limits: {cpus: lots}}}", "", "limit_cpu: must be a number of cores"),
    ("deploy: {resources: {limits: {memory: 1M}}}", "", "limit_memory: must be at least 6M"),
    ("deploy: {resources: {limits: {memory: 64M}, reservations: {memory: 128M}}}", "", "must not be above"),
    ("stop_signal: SIGNOPE", "", "stop_signal: must be a signal name"),
    ("stop_grace_period: soon", "", "stop_grace_period: must be seconds"),
    ("user: 'bad user'", "", "user: must be a user name"),
])
def test_unsupported_forms_are_refused_in_one_line(service, top, words):
    text = f"services:\n  w:\n    command: x\n    {service}\n{top}\n"
    with pytest.raises(StackError) as err:
        stack(text)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_refusals_name_where_they_are():
    with pytest.raises(StackError, match=r"^deploy/stack.yml: volumes.d.driver: only local volumes exist"):
        stack("services: {w: {command: x}}\nvolumes: {d: {driver: nfs}}\n")
    with pytest.raises(StackError, match=r"^service w: volumes: anonymous"):
        stack("services: {w: {command: x, volumes: [/d]}}\n")


def test_what_is_not_supported_is_a_warning_never_silence():
    out = stack("services:\n  w:\n    command: x\n    entrypoint: [sh]\n"
                "    deploy: {resources: {limits: {devices: []}}}\n"
                "volumes: {d: {labels: {a: b}}}\n")
    assert out.warnings == ["deploy/stack.yml: volumes.d.labels are not supported; ignored",
                            "service w: key 'entrypoint' is not supported; ignored",
                            "service w: deploy.resources.limits.devices is not supported; ignored"]
