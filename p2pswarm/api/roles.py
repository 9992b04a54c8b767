"""Which role each API endpoint needs: the one table the remote listener enforces.

Every endpoint the routers serve (``Router.endpoints()``, in the form of
:mod:`p2pswarm.api.paths`) is in :data:`ENDPOINTS` exactly once (a test enumerates them),
and an endpoint missing from it is refused to every remote client (deny by default).
The roles nest: ``admin`` may do what ``operator`` may, which may do what ``read-only`` may.

* **read-only**: look, never change: ls, ps, inspect, logs, events, metrics, top, members, mesh, cluster status.
* **operator**: run workloads: services (and so stacks, which are services), scale, update,
  rollback, removing a node's volumes, secrets and configs (create, remove), and the KV store (reads
  too: it may hold application secrets).  No endpoint ever returns a secret's data.
* **admin**: run the cluster: nodes (update, remove), join tokens, the CA, client certificates,
  the audit log, backups and restores, fault injection, benchmarks and shutting a node down.

The local unix socket (mode 0600) is the node owner's and is not subject to roles.
"""

from __future__ import annotations

from p2pswarm.api.paths import split
from p2pswarm.security.access import ROLES

READ, OPERATE, ADMIN = ROLES

ENDPOINTS: dict[str, str] = {
    # node and cluster views
    "GET /v1/info": READ,
    "GET /v1/members": READ,
    "GET /v1/cluster": READ,
    "GET /v1/mesh": READ,
    "GET /v1/top": READ,
    "GET /v1/events": READ,
    "GET /metrics": READ,
    "GET /v1/security": READ,
    # services (stacks are services)
    "GET /v1/services": READ,
    "GET /v1/services/{name}": READ,
    "GET /v1/services/{name}/tasks": READ,
    "GET /v1/services/{name}/logs": READ,
    "POST /v1/services/{name}/logs": READ,
    "POST /v1/services": OPERATE,
    "DELETE /v1/services/{name}": OPERATE,
    "POST /v1/services/{name}/update": OPERATE,
    "POST /v1/services/{name}/scale": OPERATE,
    "POST /v1/services/{name}/rollback": OPERATE,
    # this node's named volumes
    "GET /v1/volumes": READ,
    "DELETE /v1/volumes/{name}": OPERATE,
    # secrets and configs (no endpoint returns a secret's data)
    "GET /v1/secrets": READ,
    "GET /v1/secrets/{name}": READ,
    "POST /v1/secrets": OPERATE,
    "DELETE /v1/secrets/{name}": OPERATE,
    "GET /v1/configs": READ,
    "GET /v1/configs/{name}": READ,
    "POST /v1/configs": OPERATE,
    "DELETE /v1/configs/{name}": OPERATE,
    # the KV store
    "GET /v1/kv/{key}": OPERATE,
    "PUT /v1/kv/{key}": OPERATE,
    "DELETE /v1/kv/{key}": OPERATE,
    # nodes
    "GET /v1/nodes/{node}": READ,
    "POST /v1/nodes/{node}/update": ADMIN,
    "DELETE /v1/nodes/{node}": ADMIN,
    "POST /v1/shutdown": ADMIN,
    # security: tokens, the CA, client certificates, the audit log
    "GET /v1/security/join-token": ADMIN,
    "POST /v1/security/join-token": ADMIN,
    "GET /v1/security/ca": ADMIN,
    "POST /v1/security/ca": ADMIN,
    "GET /v1/security/client-certs": ADMIN,
    "POST /v1/security/client-certs": ADMIN,
    "DELETE /v1/security/client-certs/{name}": ADMIN,
    "GET /v1/security/api-ca": ADMIN,
    "POST /v1/security/api-ca": ADMIN,
    "GET /v1/audit": ADMIN,
    # backups: the whole state, secrets included (sealed into the file)
    "POST /v1/cluster/backup": ADMIN,
    "POST /v1/cluster/restore": ADMIN,
    # testing and benchmarking hooks
    "GET /v1/faults": ADMIN,
    "POST /v1/faults": ADMIN,
    "DELETE /v1/faults": ADMIN,
    "POST /v1/bench/writes": ADMIN,
}

READING_POSTS = frozenset({"POST /v1/services/{name}/logs"})
"""POSTs that change nothing (a body instead of a long query string); everything but GET and these
is a mutating call and goes to the audit log."""


def required(endpoint: str | None) -> str | None:
    """The role an endpoint needs, or None when it is not in the table (then no client may call it)."""
    return ENDPOINTS.get(endpoint) if endpoint is not None else None


def allows(role: str, needed: str | None) -> bool:
    return needed is not None and role in ROLES and ROLES.index(role) >= ROLES.index(needed)


def mutating(endpoint: str) -> bool:
    return split(endpoint)[0] != "GET" and endpoint not in READING_POSTS


def refusal(endpoint: str | None, role: str, method: str, path: str) -> str:
    """The one line a refused client reads."""
    needed = required(endpoint)
    if needed is None:
        return f"{method} {path} is not open to remote clients (it has no role); run it on a node"
    return f"{method} {path} needs the {needed} role; this client certificate has {role}"
