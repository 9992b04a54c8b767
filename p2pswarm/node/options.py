"""What a node is started with (:class:`NodeOptions`) and how it logs: the CLI reads these without importing the
daemon, so that a command that only talks to a node's API starts in a fraction of the time."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from dataclasses import field as dataclass_field

from p2pswarm.node.logtag import NodeTag

DEFAULT_PORT = 7946
DEFAULT_BIND = f"127.0.0.1:{DEFAULT_PORT}"


@dataclass(frozen=True)
class NodeOptions:
    data_dir: str | None = None
    bind: str = DEFAULT_BIND
    advertise: str | None = None
    peers: tuple[str, ...] = ()
    name: str | None = None
    labels: tuple[tuple[str, str], ...] = ()
    preset: str = "lan"
    seed: int | None = None
    """Seeds the core's rng; random by default. Fixed seeds are for reproducing a run."""
    relay_port: int = 0
    """TCP port of this node's mesh relay listener; 0 picks the SWIM port + 2 when free."""
    secure: bool = False
    """A secure cluster: CA, certificates, CURVE (``p2pswarm up`` sets it unless --insecure)."""
    insecure: bool = False
    """Plaintext chosen explicitly (``up --insecure``): refuse, with one line, to join a secure cluster."""
    token: str | None = dataclass_field(default=None, repr=False)
    """The join token (``P2PS-1-...``) a secure node needs to join a cluster (a secret: kept out of repr)."""
    autolock: bool = False
    """Encryption at rest (``up --autolock``): the data dir must hold ``security/autolock`` (the CLI makes it)."""
    api_addr: str | None = None
    """``HOST:PORT`` of the remote API (``up --api-addr``: TLS 1.3 with client certificates, secure clusters
    only; :mod:`p2pswarm.api.remote`); None serves the unix socket only."""
    unlock_key: str | None = dataclass_field(default=None, repr=False)
    """The unlock key text (``P2PSU-1-...``) to unlock at start; without it a locked data dir waits for
    ``p2pswarm unlock`` (:meth:`Node._wait_unlocked`)."""
    engine_socket: str | None = None
    """The Docker Engine API that runs image tasks (``up --engine-socket``); None: ``$DOCKER_HOST`` or
    ``unix:///var/run/docker.sock``."""
    task_user: str | None = None
    """The user a root node runs tasks as (``up --task-user``); None: a dedicated system user
    (:mod:`p2pswarm.runtime.taskuser`). A node that is not root runs tasks as itself."""
    max_learners: int | None = None
    """Raft learners the leader keeps (``up --max-learners``); None: the preset's ``autopilot.max_learners``."""
    dns_addr: str = "auto"
    """Where the node answers DNS (``up --dns-addr``): ``auto`` (port 53 when it may, else a fallback port),
    ``HOST:PORT`` or ``off`` (:mod:`p2pswarm.dns.host`)."""
    dns_domain: str = "p2pswarm."
    """The domain the node's DNS answers for (``up --dns-domain``); others are refused."""
    mesh: str = "auto"
    """The routing mesh's data path (``up --mesh``): ``auto`` (nftables DNAT when root and nftables works, else
    user space), ``kernel`` (the same, warning when it cannot) or ``userspace`` (:mod:`p2pswarm.mesh.kernel`)."""


def configure_logging(level: str = "info", *, tag_nodes: bool = False) -> None:
    """Log to stderr; ``tag_nodes`` (a process hosting several nodes) puts each line's node name in front."""
    node = "[%(node)s] " if tag_nodes else ""
    logging.basicConfig(stream=sys.stderr, level=getattr(logging, level.upper()),
                        format=f"%(asctime)s %(levelname)-7s {node}%(name)s: %(message)s", force=True)
    if tag_nodes:
        for handler in logging.getLogger().handlers:
            handler.addFilter(NodeTag())
