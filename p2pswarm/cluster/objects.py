"""Secrets and configs in the cluster state: named blobs that services read as files (pure).

A secret's ``data`` is sealed before it is proposed (by the node that received ``secret create``,
:mod:`p2pswarm.security.secretbox`), so the Raft log, every snapshot and this state hold only the
sealed bytes and the keyring id of the key that sealed them; only an agent that runs a task using
the secret opens it.  A config is not secret and is kept as given (Docker does the same).

Both are immutable (Docker's rule): a new value is a new name, and a service moves to it with an
update, which is how a secret is rotated.  ``version`` is the log index that created the object.
A service may only name objects that exist, and an object that a service still names (in its
current spec, or a spec version some of its tasks still run) cannot be removed: each refusal is
one line naming what to do.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from p2pswarm.cluster.result import Rejected, Result
from p2pswarm.cluster.spec import ServiceSpec

KINDS = ("secret", "config")
MAX_DATA = 500 * 1024
"""Bytes of one secret or config (Docker's secret limit): a command carrying it stays well under the
1 MiB Raft entry, and the CLI's JSON body (base64) under the API's 1 MiB body."""
SEALED_MAGIC = b"P2S1"
"""How sealed data starts (:func:`p2pswarm.security.pki.seal`): a secret that does not is refused, so a
bug that would propose a secret in clear cannot put it into the log's applied state."""
SEAL_OVERHEAD = 4 + 12 + 16
"""Magic, nonce and tag around a sealed secret."""
OBJECT_ID = re.compile(r"[a-z0-9]{8,64}")
OBJECT_ID_WHAT = "must be 8-64 lowercase letters and digits"
MAX_OBJECTS = 10_000
"""Secrets (or configs) a cluster holds at most."""


@dataclass(frozen=True, slots=True)
class StoredObject:
    kind: str
    name: str
    id: str
    version: int
    """The log index that created it."""
    created_at: float
    labels: tuple[tuple[str, str], ...]
    data: bytes
    """A config's contents; a secret's sealed contents."""
    key: int = 0
    """A secret: the id of the keyring key that sealed it (the security record's); a config: 0."""

    def summary(self, services: list[str]) -> dict[str, Any]:
        """What ``ls`` and ``inspect`` show: everything but the data."""
        return {"name": self.name, "id": self.id, "version": self.version, "created_at": self.created_at,
                "labels": dict(self.labels), "size": len(self.data) - (SEAL_OVERHEAD if self.kind == "secret" else 0),
                "services": services}


def referenced(spec: ServiceSpec, kind: str) -> tuple[str, ...]:
    """The names of the ``kind`` objects ``spec`` reads."""
    return tuple(ref.name for ref in (spec.secrets if kind == "secret" else spec.configs))


class Objects:
    """The secrets and configs of one cluster state, by name."""

    def __init__(self) -> None:
        self.secrets: dict[str, StoredObject] = {}
        self.configs: dict[str, StoredObject] = {}

    def of(self, kind: str) -> dict[str, StoredObject]:
        return self.secrets if kind == "secret" else self.configs

    def create(self, kind: str, f: dict, index: int) -> StoredObject:
        """A new object from a checked ``create_secret`` / ``create_config`` command."""
        store = self.of(kind)
        if f["name"] in store:
            raise Rejected(f"{kind} {f['name']} already exists ({kind}s are immutable: create one under a new name "
                          f"and update the services that use it)")
        if any(o.id == f["object"] for o in store.values()):
            raise Rejected(f"{kind} id {f['object']} is already taken")
        if len(store) >= MAX_OBJECTS:
            raise Rejected(f"the cluster holds at most {MAX_OBJECTS} {kind}s: remove unused ones first")
        data, key = f["data"], f.get("key") or 0
        if kind == "secret" and not data.startswith(SEALED_MAGIC):
            raise Rejected("secret data must be sealed by the node that receives it; refusing data in clear")
        obj = StoredObject(kind, f["name"], f["object"], index, f["at"], f["labels"], data, key)
        store[obj.name] = obj
        return obj

    def remove(self, kind: str, name: str, using: list[str]) -> None:
        """Remove ``name`` unless services (``using``) still name it."""
        store = self.of(kind)
        if name not in store:
            raise Rejected(f"{kind} {name} does not exist (see `p2pswarm {kind} ls`)")
        if using:
            raise Rejected(f"{kind} {name} is in use by service(s) {', '.join(using)}: update them to stop using it "
                          f"(`p2pswarm service update SERVICE --{kind} ...`) or remove them first")
        del store[name]

    def check_refs(self, spec: ServiceSpec) -> None:
        """Refuse a spec that names a secret or config the cluster does not hold."""
        for kind in KINDS:
            for name in referenced(spec, kind):
                if name not in self.of(kind):
                    raise Rejected(f"{kind}s: {kind} {name} does not exist (create it first: "
                                  f"`p2pswarm {kind} create {name} FILE`)")

    def find(self, kind: str, name_or_id: str) -> StoredObject | None:
        """By name, else by id."""
        store = self.of(kind)
        return store.get(name_or_id) or next((o for o in store.values() if o.id == name_or_id), None)

    # -------------------------------------------------------------- snapshots

    def snapshot(self) -> dict[str, list[dict]]:
        return {f"{kind}s": [_encode(self.of(kind)[n]) for n in sorted(self.of(kind))] for kind in KINDS}

    def restore(self, data: Mapping[str, Any]) -> None:
        """From a cluster snapshot (one written before secrets existed restores with none)."""
        for kind in KINDS:
            self.of(kind).clear()
            for record in data.get(f"{kind}s") or ():
                obj = _decode(record)
                self.of(kind)[obj.name] = obj


def _encode(obj: StoredObject) -> dict[str, Any]:
    out = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    out["labels"] = [list(p) for p in obj.labels]
    return out


def _decode(record: Mapping[str, Any]) -> StoredObject:
    labels: Iterable = record["labels"]
    return StoredObject(**{**record, "labels": tuple(tuple(p) for p in labels)})


class ObjectCommands:
    """The secret and config commands of :class:`~p2pswarm.cluster.state.ClusterState` (a mixin: the state
    machine dispatches ``create_secret`` to ``_create_secret``), and the ``ls`` rows."""

    if TYPE_CHECKING:
        objects: Objects
        services: dict[str, Any]

        def tasks_of(self, service: str) -> list[Any]: ...

    def _create_secret(self, f: dict, index: int) -> Result:
        return Result(True, value={"id": self.objects.create("secret", f, index).id, "version": index})

    def _create_config(self, f: dict, index: int) -> Result:
        return Result(True, value={"id": self.objects.create("config", f, index).id, "version": index})

    def _remove_secret(self, f: dict, index: int) -> Result:
        self.objects.remove("secret", f["name"], self.object_users("secret").get(f["name"], []))
        return Result(True)

    def _remove_config(self, f: dict, index: int) -> Result:
        self.objects.remove("config", f["name"], self.object_users("config").get(f["name"], []))
        return Result(True)

    def object_users(self, kind: str) -> dict[str, list[str]]:
        """Object name -> the services (sorted) that use it: their current spec names it, or the spec
        version a live task of theirs runs does (a rolling update still replacing it).  Older versions
        kept only for a rollback do not count, as in Docker: a rollback to one is refused instead."""
        out: dict[str, list[str]] = {}
        for name in sorted(self.services):
            svc = self.services[name]
            versions = {t.version for t in self.tasks_of(name) if t.live} - {svc.version}
            specs = [svc.spec, *(s for s in map(svc.spec_at, sorted(versions)) if s is not None)]
            for used in sorted({n for spec in specs for n in referenced(spec, kind)}):
                out.setdefault(used, []).append(name)
        return out

    def object_summaries(self, kind: str) -> list[dict[str, Any]]:
        """``secret ls`` / ``config ls`` rows (never the data), with the services using each."""
        store, users = self.objects.of(kind), self.object_users(kind)
        return [store[n].summary(users.get(n, [])) for n in sorted(store)]
