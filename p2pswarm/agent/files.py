"""The secrets and configs of this node's tasks, read from the applied cluster state for the runtime.

Every node holds the whole cluster state, secrets included, but sealed: a secret is opened here
only for a task of this node that is meant to run and names it, and its clear data is kept in
memory only while such a task does (each :func:`p2pswarm.agent.host.assignments` round drops the
ones no task read).  A secret that cannot be opened (this node has not adopted a rotated cluster
key yet, or the secret is gone) becomes a :class:`~p2pswarm.runtime.base.TaskFile` with an
``error``: the task then fails to start with that line, and the scheduler restarts it later.
"""

from __future__ import annotations

from typing import Any, Callable

from p2pswarm.cluster.spec import ServiceSpec
from p2pswarm.runtime.base import TaskFile

NO_KEYRING = "this cluster is plaintext (--insecure): it cannot hold secrets"


class TaskFileSource:
    def __init__(self, open_secret: Callable[[Any], bytes] | None = None) -> None:
        """``open_secret(stored secret) -> clear data`` (the node's keyring); None in a plaintext cluster."""
        self.open_secret = open_secret
        self._opened: dict[tuple[str, str], bytes] = {}
        """(name, id) -> clear data of the secrets this node's tasks use."""

    def files(self, state: Any, spec: ServiceSpec, used: set[tuple[str, str]]) -> tuple[TaskFile, ...]:
        """The files of a task running ``spec``; the secrets it opens are added to ``used``."""
        out = []
        for ref in spec.configs:
            config = state.objects.configs.get(ref.name)
            out.append(TaskFile("config", ref, config.data) if config is not None else
                       TaskFile("config", ref, b"", f"config {ref.name} no longer exists"))
        for ref in spec.secrets:
            secret = state.objects.secrets.get(ref.name)
            if secret is None:
                out.append(TaskFile("secret", ref, b"", f"secret {ref.name} no longer exists"))
                continue
            key = (secret.name, secret.id)
            try:
                data = self._opened.get(key) or self._open(secret)
            except Exception as exc:  # one line in `service ps`; never the data
                out.append(TaskFile("secret", ref, b"", str(exc).splitlines()[0] if str(exc) else type(exc).__name__))
                continue
            self._opened[key] = data
            used.add(key)
            out.append(TaskFile("secret", ref, data))
        return tuple(out)

    def _open(self, secret: Any) -> bytes:
        if self.open_secret is None:
            raise RuntimeError(NO_KEYRING)
        return self.open_secret(secret)

    def keep_only(self, used: set[tuple[str, str]]) -> None:
        """Forget the clear data of secrets no task of this node reads any more."""
        self._opened = {k: v for k, v in self._opened.items() if k in used}
