"""TLS contexts for encrypted forwarding between meshes, made from a table's ``tls`` section.

The node hands the data plane its mesh TLS material with each table (PEM text: this
node's leaf certificate and key, the TLS twins of the trusted CAs; see
:mod:`p2pswarm.security.meshtls`) and the revoked node ids. Both sides of a mesh-to-mesh
connection present their leaf and require the other's (TLS 1.3, mutual); the host name is
not checked (the peer is named by the certificate, not by DNS), instead :meth:`TlsConfig.admits`
reads the peer's node id from its verified leaf and refuses another cluster's or a revoked
node's.

``ssl`` loads a certificate chain only from files, so the PEMs go to a private temporary
directory (0700) that is removed as soon as they are loaded.
"""

from __future__ import annotations

import os
import ssl
import tempfile
from dataclasses import dataclass
from typing import Any, Mapping

from p2pswarm.security.meshtls import peer_identity

ALPN = "p2pswarm-mesh/1"
"""What runs inside the TLS connection (:mod:`p2pswarm.mesh.tlsmux` framing), agreed in the
handshake: a peer speaking anything else is refused after it (:func:`peer_of` gives None)."""


class TlsError(ValueError):
    """The table's TLS section cannot be used (the previous one stays in force)."""


@dataclass(frozen=True)
class TlsConfig:
    cluster_id: str
    revoked: frozenset[str]
    server: ssl.SSLContext
    client: ssl.SSLContext
    source: tuple[str, str, str]
    """(cert, key, anchors) it was made from, to skip rebuilding an unchanged one."""

    def admits(self, ssl_object: Any) -> bool:
        """True when the verified peer leaf is for a node of this cluster that is not revoked."""
        return self.allows(peer_of(ssl_object))

    def allows(self, ident: tuple[str, str] | None) -> bool:
        """:meth:`admits` for a peer identity read earlier (a kept TLS session's)."""
        return ident is not None and ident[0] == self.cluster_id and ident[1] not in self.revoked


def peer_of(ssl_object: Any) -> tuple[str, str] | None:
    """(cluster id, node id) of a TLS connection's verified peer leaf, or None (also when the
    peer did not agree on :data:`ALPN`)."""
    if ssl_object is None or ssl_object.selected_alpn_protocol() != ALPN:
        return None
    try:
        der = ssl_object.getpeercert(binary_form=True)
    except (ValueError, ssl.SSLError):
        return None
    return peer_identity(der) if der else None


def _context(side: int, cert: str, key: str, anchors: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(side)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.set_alpn_protocols([ALPN])
    load_pem_chain(ctx, cert, key)
    ctx.load_verify_locations(cadata=anchors)
    return ctx


def load_pem_chain(ctx: ssl.SSLContext, cert: str, key: str) -> None:
    """``ctx.load_cert_chain`` from PEM text (it reads only files: they live in a 0700 directory
    only while they are loaded)."""
    with tempfile.TemporaryDirectory(prefix="p2pswarm-tls-") as tmp:
        os.chmod(tmp, 0o700)
        cert_path, key_path = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
        for path, text in ((cert_path, cert), (key_path, key)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text)
        ctx.load_cert_chain(cert_path, key_path)


def parse_tls(section: Any, previous: TlsConfig | None = None) -> TlsConfig | None:
    """A table's ``tls`` section as contexts (None when absent); TlsError with one line when unusable."""
    if section is None:
        return None
    if not isinstance(section, Mapping):
        raise TlsError("table.tls must be a mapping")
    fields = [section.get(k) for k in ("cluster_id", "cert", "key", "anchors")]
    revoked = section.get("revoked", [])
    if not all(isinstance(f, str) and f for f in fields) or not isinstance(revoked, list) \
            or not all(isinstance(r, str) for r in revoked):
        raise TlsError("table.tls needs cluster_id, cert, key, anchors (text) and revoked (a list of node ids)")
    cluster_id, cert, key, anchors = fields
    source = (cert, key, anchors)
    if previous is not None and previous.source == source and previous.cluster_id == cluster_id:
        return TlsConfig(cluster_id, frozenset(revoked), previous.server, previous.client, source)
    try:
        return TlsConfig(cluster_id, frozenset(revoked), _context(ssl.PROTOCOL_TLS_SERVER, cert, key, anchors),
                         _context(ssl.PROTOCOL_TLS_CLIENT, cert, key, anchors), source)
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise TlsError(f"table.tls: the mesh TLS material cannot be loaded: {exc}") from None
