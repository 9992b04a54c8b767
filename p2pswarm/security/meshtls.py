"""TLS material for encrypted forwarding between routing meshes (pure: entropy and time come in).

**Why not the node certificates.**  A node certificate's key is the node's X25519 CURVE
key, which can agree on keys but cannot sign, so TLS cannot use it; and our CA
certificates carry a *critical* p2pswarm identity extension that OpenSSL refuses
("unhandled critical extension") anywhere in a chain.  So the mesh gets its own:

* **anchors**: for each CA key this node holds, a *TLS twin* of the CA certificate:
  the same subject, key, serial and validity, without the identity extension.  The
  twin is self-signed with the CA key; Ed25519 signatures are deterministic, so every
  member makes the byte-identical twin and there is nothing to distribute.
* **a leaf per node**: an Ed25519 key and a certificate signed by the current CA
  (every member holds the CA key, as it does to sponsor joins), subject CN = node id,
  O = ``p2pswarm mesh <cluster id>``, for TLS client and server authentication.
  After the handshake each side reads the peer's node id from the CN and refuses a
  revoked node (the data plane gets the revoked ids with each routing table).

During a CA rotation a node trusts the twins of every root it still holds a key for
(the old one from before the rotation, the new one after), and its leaf is re-issued
as soon as the current CA changes; after the rotation only the new twin is trusted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from p2pswarm.security.pki import (
    BACKDATE,
    NODE_CERT_LIFETIME,
    RENEW_FRACTION,
    CertAuthority,
    TrustBundle,
    _dt,
    _serial,
    _validity,
    ca_certificate,
    to_pem,
)

MESH_ORG = "p2pswarm mesh "
"""Prefix of a mesh leaf's organisation; the cluster id follows."""


def tls_anchor(ca: CertAuthority) -> bytes:
    """The CA certificate's TLS twin (DER): same subject, key, serial and validity; no p2pswarm extension."""
    start, end = _validity(ca.cert)
    cert = ca_certificate(ca.key, ca.cert.subject, ca.cert.serial_number, start, end, path_length=0)
    return cert.public_bytes(serialization.Encoding.DER)


def issue_leaf(ca: CertAuthority, node_id: str, now: float, key_entropy: bytes, serial_entropy: bytes, *,
               lifetime: float = NODE_CERT_LIFETIME) -> tuple[bytes, bytes]:
    """(certificate DER, private key PEM) of a mesh TLS leaf for ``node_id`` signed by ``ca``."""
    key = ed25519.Ed25519PrivateKey.from_private_bytes(key_entropy)
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, MESH_ORG + ca.cluster_id),
                         x509.NameAttribute(NameOID.COMMON_NAME, node_id)])
    end = min(now + lifetime, _validity(ca.cert)[1])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca.cert.subject)
            .public_key(key.public_key()).serial_number(_serial(serial_entropy))
            .not_valid_before(_dt(now - BACKDATE)).not_valid_after(_dt(end))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
            .sign(ca.key, None))
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.DER), pem


def peer_identity(der: bytes | None) -> tuple[str, str] | None:
    """(cluster id, node id) of a verified mesh leaf (from ``getpeercert(binary_form=True)``), or None."""
    if not der:
        return None
    try:
        cert = x509.load_der_x509_certificate(der)
        org = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value
        node = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    except Exception:
        return None
    if not isinstance(org, str) or not org.startswith(MESH_ORG) or not isinstance(node, str) or not node:
        return None
    return org[len(MESH_ORG):], node


@dataclass(frozen=True)
class Material:
    """What the data plane loads into its TLS contexts (PEM text)."""

    cluster_id: str
    cert_pem: str
    key_pem: str
    anchors_pem: str

    def as_dict(self) -> dict[str, str]:
        return {"cluster_id": self.cluster_id, "cert": self.cert_pem, "key": self.key_pem,
                "anchors": self.anchors_pem}


class MeshTLS:
    """This node's mesh TLS material, kept in step with the CA (call :meth:`refresh` now and then)."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self._anchors: dict[bytes, bytes] = {}
        """root digest -> TLS twin, for every CA key this node has held."""
        self._leaf: tuple[bytes, bytes, float, float, bytes] | None = None
        """(cert DER, key PEM, not_before, not_after, issuing root digest)."""
        self.material: Material | None = None

    def refresh(self, ca: CertAuthority | None, bundle: TrustBundle | None, now: float,
                entropy: Callable[[int], bytes]) -> bool:
        """Re-issue what changed (new CA, leaf due for renewal); True when the material changed."""
        if ca is None or bundle is None or ca.digest not in bundle.digests:
            return False
        if ca.digest not in self._anchors:
            self._anchors[ca.digest] = tls_anchor(ca)
        leaf = self._leaf
        due = leaf is None or leaf[4] != ca.digest or now >= leaf[2] + RENEW_FRACTION * (leaf[3] - leaf[2])
        if due:
            cert, key = issue_leaf(ca, self.node_id, now, entropy(32), entropy(16))
            start, end = _validity(x509.load_der_x509_certificate(cert))
            self._leaf = leaf = (cert, key, start, end, ca.digest)
        anchors = "".join(to_pem(self._anchors[d]) for d in sorted(bundle.digests) if d in self._anchors)
        material = Material(bundle.cluster_id, to_pem(leaf[0]), leaf[1].decode("ascii"), anchors)
        if material == self.material:
            return False
        self.material = material
        return True
