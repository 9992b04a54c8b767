"""The parts of a service spec that say how a task runs on its node: its image and network, the
user it runs as, its limits, how it is stopped, what it mounts and which secrets and configs it
reads as files.

Like :mod:`p2pswarm.cluster.spec` (which holds these in :class:`~p2pswarm.cluster.spec.ServiceSpec`),
every type checks itself on construction and a bad value is one line of :class:`SpecError`.  The
text forms follow Docker's flags: ``--mount type=volume,source=data,target=/data,readonly``,
``--secret NAME`` or ``--secret source=NAME,target=FILE,mode=0400``, ``--stop-signal SIGINT``.
"""

from __future__ import annotations

import posixpath
import re
import signal
from dataclasses import dataclass
from typing import Any, Callable

from p2pswarm.cluster.checks import SpecError, choice, fail, flag, integer, text

IMAGE = re.compile(r"(?:[A-Za-z0-9.-]+(?::\d{1,5})?/)?[a-z0-9]+(?:[._-]+[a-z0-9]+)*(?:/[a-z0-9]+(?:[._-]+[a-z0-9]+)*)*"
                   r"(?::\w[\w.-]{0,127})?(?:@sha256:[a-f0-9]{64})?")
IMAGE_WHAT = "must be an image reference like nginx, nginx:1.27 or registry:5000/team/app:v2"
USER = re.compile(r"(?:[a-z_][a-z0-9_-]{0,31}|\d{1,10})(?::(?:[a-z_][a-z0-9_-]{0,31}|\d{1,10}))?")
USER_WHAT = "must be a user name or uid, optionally :group (e.g. nobody, 1000, 1000:1000)"
NETWORKS = ("host", "bridge")
"""``host``: the task shares the node's network and gets ``$PORT`` (processes always do); ``bridge``:
a container on the engine's bridge, each published target port mapped to a dynamic host port."""
OBJECT_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_.-]{0,62}[A-Za-z0-9])?")
OBJECT_NAME_WHAT = "must be 1-64 letters, digits, '_', '.' or '-', starting and ending with a letter or digit"
"""Names of secrets, configs and named volumes (Docker's rule)."""
FILE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,255}")
MAX_MOUNTS, MAX_FILES = 32, 64
MIN_LIMIT_MEMORY = 6 * 1024 * 1024
"""Docker's smallest memory limit: below it not even a shell starts, so the limit is refused at create."""
MIN_LIMIT_CPU, MAX_LIMIT_PIDS = 0.01, 4_194_304
SECRET_MODE, CONFIG_MODE = 0o400, 0o444
"""Default file modes: a secret is readable by the task's user only, a config by anyone in the task."""


def parse_signal(value: Any, field: str = "stop_signal") -> str:
    """``SIGTERM``, ``TERM``, ``term`` or ``15`` -> ``SIGTERM`` (the name, whatever the platform's number)."""
    raw = str(value).strip().upper() if isinstance(value, (str, int)) and not isinstance(value, bool) else ""
    if raw.isdigit():
        try:
            return signal.Signals(int(raw)).name
        except ValueError:
            raise fail(field, "must be a signal name or number like SIGTERM, SIGINT or 15", value) from None
    name = raw if raw.startswith("SIG") else "SIG" + raw
    if name not in signal.Signals.__members__ or name.startswith("SIG_"):
        raise fail(field, "must be a signal name or number like SIGTERM, SIGINT or 15", value)
    return name


def container_path(field: str, value: Any) -> str:
    """An absolute, normalised path with no ``..`` (a target that stays inside the task's file system)."""
    text(field, value, 4096)
    if not value.startswith("/") or ".." in value.split("/") or posixpath.normpath(value) == "/":
        raise fail(field, "must be an absolute path below / without '..'", value)
    return posixpath.normpath(value)


def _options(spec: str, field: str, keys: dict[str, str], flags: tuple[str, ...] = ()) -> dict[str, str]:
    """``k=v,k=v,flag`` with each key mapped through ``keys`` (aliases -> canonical name)."""
    out: dict[str, str] = {}
    for part in (p.strip() for p in spec.split(",")):
        key, sep, value = part.partition("=")
        key = key.strip().lower()
        if not sep and key in flags:
            value = "true"
        elif not sep or key not in keys:
            raise fail(field, "options are " + ", ".join(sorted(set(keys))), part)
        canonical = keys.get(key, key)
        if canonical in out:
            raise fail(field, f"{canonical} is given twice", spec)
        out[canonical] = value.strip()
    return out


def _bool_option(field: str, value: str) -> bool:
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise fail(field, "must be true or false", value)


@dataclass(frozen=True, slots=True)
class Mount:
    """``bind``: a path of the node (``source``, absolute) at ``target``; ``volume``: a named local volume,
    created on first use on the node and kept across task restarts (``source`` is its name)."""
    type: str
    source: str
    target: str
    readonly: bool = False

    def __post_init__(self) -> None:
        choice("mounts.type", self.type, ("bind", "volume"))
        if self.type == "bind":
            object.__setattr__(self, "source", container_path("mounts.source", self.source))
        else:
            text("mounts.source", self.source, 64, OBJECT_NAME, "a volume name " + OBJECT_NAME_WHAT)
        object.__setattr__(self, "target", container_path("mounts.target", self.target))
        flag("mounts.readonly", self.readonly)

    @classmethod
    def parse(cls, spec: Any) -> "Mount":
        if not isinstance(spec, str):
            raise fail("mounts", "must look like type=volume,source=NAME,target=/PATH[,readonly]", spec)
        o = _options(spec, "mounts", {"type": "type", "source": "source", "src": "source", "target": "target",
                                      "destination": "target", "dst": "target", "readonly": "readonly",
                                      "ro": "readonly"}, ("readonly", "ro"))
        for key in ("source", "target"):
            if key not in o:
                raise fail("mounts", f"{key}= is required", spec)
        return cls(o.get("type", "volume"), o["source"], o["target"],
                   _bool_option("mounts.readonly", o.get("readonly", "false")))

    def __str__(self) -> str:
        return f"type={self.type},source={self.source},target={self.target}" + (",readonly" if self.readonly else "")


@dataclass(frozen=True, slots=True)
class FileRef:
    """A secret or config a task reads as a file: ``name`` in the cluster, ``target`` the file's name (a
    secret: a file name under ``/run/secrets``; a config: an absolute path in a container, its last part
    under ``$P2PSWARM_CONFIGS`` for a process), ``mode`` its permission bits (owner: the task's user)."""
    name: str
    target: str
    mode: int

    def __post_init__(self) -> None:
        text("name", self.name, 64, OBJECT_NAME, OBJECT_NAME_WHAT)
        text("target", self.target, 4096)
        if not FILE_NAME.fullmatch(self.target):
            object.__setattr__(self, "target", container_path("target", self.target))
        integer("mode", self.mode, 0, 0o777)

    @classmethod
    def parse(cls, spec: Any, kind: str) -> "FileRef":
        """``NAME`` or ``source=NAME[,target=T][,mode=0440]`` for ``kind`` ``secret`` or ``config``."""
        if not isinstance(spec, str) or not spec.strip():
            raise fail(f"{kind}s", "must look like NAME or source=NAME,target=FILE,mode=0400", spec)
        if "=" not in spec:
            o = {"source": spec.strip()}
        else:
            o = _options(spec, f"{kind}s", {"source": "source", "src": "source", "target": "target",
                                             "mode": "mode"})
        if "source" not in o:
            raise fail(f"{kind}s", "source= is required", spec)
        try:
            mode = int(o["mode"], 8) if "mode" in o else (SECRET_MODE if kind == "secret" else CONFIG_MODE)
        except ValueError:
            raise fail(f"{kind}s.mode", "must be octal permission bits like 0400", o["mode"]) from None
        return file_ref(kind, o["source"], o.get("target"), mode)

    def file_name(self) -> str:
        """The file's name in the task's secrets or configs directory (a process task's view)."""
        return posixpath.basename(self.target)

    def __str__(self) -> str:
        return f"source={self.name},target={self.target},mode={self.mode:04o}"


def file_ref(kind: str, name: str, target: str | None, mode: int) -> FileRef:
    """A checked reference: a secret's target is a plain file name, a config's an absolute path."""
    try:
        text("name", name, 64, OBJECT_NAME, OBJECT_NAME_WHAT)
        if kind == "secret":
            target = target or name
            text("target", target, 255, FILE_NAME, "a secret's target is a file name (letters, digits, '_.-')")
        else:
            target = container_path("target", target or "/" + name)
        return FileRef(name, target, mode)
    except SpecError as e:
        raise e.under(f"{kind}s") from None


def check_secret_targets(secrets: tuple[FileRef, ...]) -> None:
    for ref in secrets:
        if not FILE_NAME.fullmatch(ref.target):
            raise fail("secrets.target", "a secret's target is a file name (letters, digits, '_.-')", ref.target)


def unique(field: str, items: tuple, key: Callable[[Any], str]) -> None:
    """Refuse two items with the same ``key`` (two mounts on one target, two files of one name)."""
    seen: set[str] = set()
    for item in items:
        k = key(item)
        if k in seen:
            raise fail(field, "each target may appear once", k)
        seen.add(k)


def check_user(value: Any) -> str | None:
    return None if value is None else text("user", value, 65, USER, USER_WHAT)


def check_image(value: Any) -> str | None:
    return None if value is None else text("image", value, 255, IMAGE, IMAGE_WHAT)


def check_network(value: Any, image: str | None) -> str:
    choice("network", value, NETWORKS)
    if value == "bridge" and image is None:
        raise SpecError("network: bridge is for image (container) services; processes share the node's network")
    return value
