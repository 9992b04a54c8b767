"""The compose keys that say how a stack's tasks run on their node (pure; used by :mod:`p2pswarm.cluster.stack`).

* ``image`` and ``command`` (the image's own command when none is given), ``user``, ``stop_signal``,
  ``stop_grace_period`` and ``deploy.resources.limits`` (``cpus``, ``memory``, ``pids``): the service
  spec's fields of the same meaning.
* ``volumes``: ``NAME:/path[:ro|rw]`` (a named volume, declared in the top-level ``volumes:``),
  ``/abs:/path[:ro|rw]`` (a bind mount of the node's path) and the long syntax (``type: volume|bind``,
  ``source``, ``target``, ``read_only``).  A top-level volume ``data`` of stack ``shop`` is the node's
  volume ``shop_data``, as Docker names it; ``name: X`` or ``external: true`` use the name as given.
  Refused, one line each: a relative bind source (a path of the machine running deploy, not of the
  nodes), an anonymous volume, other mount types and options, a driver other than ``local``.
* ``secrets`` and ``configs``: a service names top-level entries (short: the name; long: ``source``,
  ``target``, ``mode``).  A top-level entry is ``external: true`` (an existing cluster secret or
  config, by its name or ``name:``) or ``file: PATH`` (relative to the compose file), which ``stack
  deploy`` creates as ``<stack>_<name>`` (``name:`` overrides) unless it exists: secrets and configs are
  immutable, so a changed file needs a new name.  A secret's file is ``/run/secrets/<name>`` by default,
  a config's ``/<name>`` (the compose name, not the cluster's); ``uid``, ``gid`` and ``environment:`` are
  refused (the files belong to the task's user; values are never taken from the shell).

Errors are :class:`SpecError` lines that the caller prefixes with the service or section.
"""

from __future__ import annotations

import posixpath
import shlex
from dataclasses import dataclass
from typing import Any

from p2pswarm.cluster.checks import SpecError
from p2pswarm.cluster.spec import parse_duration, parse_memory
from p2pswarm.cluster.stack_messages import mapping, quote
from p2pswarm.cluster.workload import CONFIG_MODE, SECRET_MODE, FileRef, Mount, file_ref

MOUNT_KEYS = ("type", "source", "target", "read_only")
FILE_KEYS = ("source", "target", "mode")
TOP_VOLUME_KEYS = ("driver", "external", "name", "labels")
TOP_OBJECT_KEYS = ("file", "external", "name", "labels")
LIMIT_KEYS = ("cpus", "memory", "pids")


@dataclass(frozen=True)
class StackObject:
    """A secret or config ``stack deploy`` makes from a file when the cluster does not have it yet."""

    kind: str
    name: str
    """Its name in the cluster (``<stack>_<compose name>`` unless the entry gives ``name:``)."""
    file: str
    """The file, relative paths taken from the compose file's directory."""


def _unknown(given: dict, allowed: tuple[str, ...], what: str) -> None:
    extra = sorted(str(k) for k in given if k not in allowed)
    if extra:
        raise SpecError(f"{what}: {quote(extra[0])} is not supported (allowed: {', '.join(allowed)})")


def _name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise SpecError(f"{what}: must be a name")
    return value


# ------------------------------------------------------------------ top-level sections

def top_volumes(section: Any, stack: str, warnings: list[str], source: str) -> dict[str, str]:
    """Compose volume name -> the node's volume name, from the top-level ``volumes:``."""
    out = {}
    for key, entry in mapping(section, "volumes").items():
        what = f"volumes.{key}"
        entry = mapping(entry, what)
        _unknown(entry, TOP_VOLUME_KEYS, what)
        if entry.get("driver", "local") != "local":
            raise SpecError(f"{what}.driver: only local volumes exist (a directory on each node), got "
                            f"{quote(entry['driver'])}")
        if entry.get("labels"):
            warnings.append(f"{source}: {what}.labels are not supported; ignored")
        out[str(key)] = _cluster_name(entry, str(key), stack, what)
    return out


def top_objects(kind: str, section: Any, stack: str, base_dir: str,
                warnings: list[str], source: str) -> tuple[dict[str, str], list[StackObject]]:
    """(compose name -> cluster name, the objects made from files) of the top-level ``secrets:`` or ``configs:``."""
    names, made = {}, []
    for key, entry in mapping(section, f"{kind}s").items():
        what = f"{kind}s.{key}"
        entry = mapping(entry, what)
        if "environment" in entry or "content" in entry:
            raise SpecError(f"{what}: only file: and external: are supported (values are never taken from "
                            f"the shell or the compose file)")
        _unknown(entry, TOP_OBJECT_KEYS, what)
        if entry.get("labels"):
            warnings.append(f"{source}: {what}.labels are not supported; ignored")
        if bool(entry.get("external")) == ("file" in entry):
            raise SpecError(f"{what}: give either file: PATH (created by stack deploy) or external: true "
                            f"(created with `p2pswarm {kind} create`)")
        name = names[str(key)] = _cluster_name(entry, str(key), stack, what)
        if "file" in entry:
            path = entry["file"]
            if not isinstance(path, str) or not path:
                raise SpecError(f"{what}.file: must be a path")
            made.append(StackObject(kind, name, posixpath.normpath(posixpath.join(base_dir, path))))
    return names, made


def _cluster_name(entry: dict, key: str, stack: str, what: str) -> str:
    external = entry.get("external", False)
    if isinstance(external, dict):  # the old form, external: {name: X}
        entry = {**entry, "name": external.get("name", entry.get("name"))}
        external = True
    if not isinstance(external, bool):
        raise SpecError(f"{what}.external: must be true or false")
    if entry.get("name") is not None:
        return _name(entry["name"], f"{what}.name")
    return key if external else f"{stack}_{key}"


# ------------------------------------------------------------------ per service

def command(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        try:
            return shlex.split(value)
        except ValueError as exc:
            raise SpecError(f"command: {exc}") from None
    if isinstance(value, list) and all(isinstance(v, (str, int, float)) for v in value):
        return [str(v) for v in value]
    raise SpecError("command: must be a string or a list of strings")


def run_fields(svc: dict) -> dict[str, Any]:
    """``image``, ``command``/``args``, ``user``, ``stop_signal`` and ``stop_grace`` of a compose service."""
    argv = command(svc.get("command"))
    image = svc.get("image")
    if image is not None and not isinstance(image, str):
        raise SpecError(f"image: must be an image reference, got {quote(image)}")
    if not argv and not image:
        raise SpecError("needs a command or an image")
    out: dict[str, Any] = {"image": image, "command": argv[0] if argv else "", "args": tuple(argv[1:])}
    if svc.get("user") is not None:
        out["user"] = str(svc["user"])
    if svc.get("stop_signal") is not None:
        out["stop_signal"] = svc["stop_signal"]
    if svc.get("stop_grace_period") is not None:
        out["stop_grace"] = parse_duration(svc["stop_grace_period"], "stop_grace_period")
    return out


def limits(value: Any, where: str, warnings: list[str]) -> dict[str, Any]:
    """``deploy.resources.limits`` -> ``limit_cpu``, ``limit_memory``, ``limit_pids`` (enforced by the node)."""
    given = mapping(value, "deploy.resources.limits")
    for key in given:
        if key not in LIMIT_KEYS:
            warnings.append(f"{where}: deploy.resources.limits.{key} is not supported; ignored")
    out: dict[str, Any] = {}
    if given.get("cpus") is not None:
        try:
            out["limit_cpu"] = float(given["cpus"])
        except (TypeError, ValueError):
            raise SpecError(f"limit_cpu: must be a number of cores, got {quote(given['cpus'])}") from None
    if given.get("memory") is not None:
        out["limit_memory"] = parse_memory(given["memory"], "limit_memory")
    if given.get("pids") is not None:
        out["limit_pids"] = given["pids"]
    return out


def mounts(value: Any, volumes: dict[str, str]) -> tuple[Mount, ...]:
    """A service's ``volumes:`` as mounts (``volumes``: the top-level names, see :func:`top_volumes`)."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise SpecError("volumes: must be a list")
    return tuple(_mount(v, volumes) for v in value)


def _mount(value: Any, volumes: dict[str, str]) -> Mount:
    target: Any  # checked by Mount
    readonly: Any
    if isinstance(value, str):
        parts = value.split(":")
        if len(parts) == 1:
            raise SpecError(f"volumes: anonymous volumes are not supported, got {quote(value)}; name one "
                            f"(data:{value}) and declare it in the top-level volumes")
        if len(parts) > 3:
            raise SpecError(f"volumes: must look like NAME:/path[:ro] or /host/path:/path[:ro], got {quote(value)}")
        mode = parts[2] if len(parts) == 3 else "rw"
        if mode not in ("ro", "rw"):
            raise SpecError(f"volumes: the mode must be ro or rw, got {quote(mode)} in {quote(value)}")
        source, target, readonly = parts[0], parts[1], mode == "ro"
        kind = "bind" if source.startswith(("/", ".", "~")) else "volume"
    else:
        entry = mapping(value, "volumes")
        _unknown(entry, MOUNT_KEYS, "volumes")
        kind = entry.get("type", "volume")
        if kind not in ("volume", "bind"):
            raise SpecError(f"volumes: type {quote(kind)} is not supported (volume or bind)")
        if not entry.get("source"):
            raise SpecError("volumes: anonymous volumes are not supported; give a source (a top-level volume's "
                            "name, or an absolute path of the nodes for a bind)")
        source, target, readonly = str(entry["source"]), entry.get("target"), entry.get("read_only", False)
    if kind == "bind" and not source.startswith("/"):
        raise SpecError(f"volumes: a bind source must be an absolute path of the nodes, got {quote(source)} "
                        f"(a relative path names the machine running deploy)")
    if kind == "volume":
        if source not in volumes:
            raise SpecError(f"volumes: volume {quote(source)} is not declared in the top-level volumes")
        source = volumes[source]
    try:
        return Mount(kind, source, target, readonly)
    except SpecError as exc:
        raise SpecError(f"volumes: {str(exc).removeprefix('mounts.')}") from None


def files(kind: str, value: Any, declared: dict[str, str]) -> tuple[FileRef, ...]:
    """A service's ``secrets:`` or ``configs:`` as file references to the cluster objects they name."""
    what = f"{kind}s"
    if value is None:
        return ()
    if not isinstance(value, list):
        raise SpecError(f"{what}: must be a list")
    out = []
    for item in value:
        entry = {"source": item} if isinstance(item, str) else mapping(item, what)
        if "uid" in entry or "gid" in entry:
            raise SpecError(f"{what}: uid and gid are not supported (the files belong to the user the task "
                            f"runs as)")
        _unknown(entry, FILE_KEYS, what)
        name = _name(entry.get("source"), f"{what}.source")
        if name not in declared:
            raise SpecError(f"{what}: {quote(name)} is not declared in the top-level {what}")
        target = entry.get("target") or (name if kind == "secret" else "/" + name)
        if kind == "secret" and isinstance(target, str) and target.startswith("/run/secrets/"):
            target = target.removeprefix("/run/secrets/")
        out.append(file_ref(kind, declared[name], target, _mode(entry.get("mode"), kind, what)))
    return tuple(out)


def _mode(value: Any, kind: str, what: str) -> int:
    if value is None:
        return SECRET_MODE if kind == "secret" else CONFIG_MODE
    if isinstance(value, str):
        try:
            return int(value, 8)
        except ValueError:
            pass
    elif isinstance(value, int) and not isinstance(value, bool):
        return value  # YAML reads 0440 as octal already
    raise SpecError(f"{what}.mode: must be octal permission bits like 0440, got {quote(value)}")
