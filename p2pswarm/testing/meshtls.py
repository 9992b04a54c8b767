"""Mesh TLS material and port pairs for data-plane tests and benchmarks (no cluster needed)."""

from __future__ import annotations

import os
import socket
import time

from p2pswarm.security.meshtls import MeshTLS
from p2pswarm.security.pki import CertAuthority, TrustBundle
from p2pswarm.testing.localcluster import free_port


def throwaway_ca(cluster_id: str = "testcluster00001", seed: bytes | None = None) -> CertAuthority:
    """A throwaway cluster CA (deterministic with ``seed``, one byte repeated)."""
    key, serial = (seed * 32, seed * 16) if seed else (os.urandom(32), os.urandom(16))
    return CertAuthority.create(cluster_id, time.time(), key, serial)


def tls_section(node: str, ca: CertAuthority, revoked: tuple[str, ...] = ()) -> dict:
    """A table's ``tls`` section for ``node``: what its security host makes from the CA key."""
    m = MeshTLS(node)
    m.refresh(ca, TrustBundle(ca.cluster_id, [ca.cert_der]), time.time(), os.urandom)
    return {**m.material.as_dict(), "revoked": list(revoked)}


def free_port_pair(host: str) -> int:
    """A free TCP port whose next port is free too (a relay port and its TLS relay)."""
    while True:
        port = free_port(host)
        with socket.socket() as s:
            try:
                s.bind((host, port + 1))
                return port
            except OSError:
                continue
