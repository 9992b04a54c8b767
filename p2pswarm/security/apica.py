"""The API CA: the CA of the remote API only (pure: keys, entropy and time come in).

**Why not the cluster CA.**  ``node rm`` (and ``cluster ca --rotate``) replace the cluster CA
(:mod:`p2pswarm.security.rekey`); if it also signed client bundles and the API's server
certificates, every operator's laptop would be locked out by the removal of any node.  So the
remote API has its own CA, made once per cluster and untouched by those rotations:

* the CA certificate is TLS-compatible (no critical p2pswarm extension, unlike the cluster CA:
  OpenSSL refuses an unknown critical extension anywhere in a chain, see
  :mod:`p2pswarm.security.meshtls`); subject ``O = p2pswarm api <cluster id>``;
* its key lives in the Raft state (the access record, :mod:`p2pswarm.security.access`) sealed
  under the cluster key with :data:`SEAL_CONTEXT`, and is re-sealed under each new cluster key
  after a rekey (:mod:`p2pswarm.security.apicahost`);
* it signs client certificates (:func:`p2pswarm.security.clientcerts.issue_client`) and, in
  memory on each node serving ``--api-addr``, that node's server certificate (:func:`issue_server`,
  ``O = p2pswarm api <cluster id>``, ``CN = node id``, ``serverAuth`` only).

A removed node's data dir still holds this key (it could unseal it before the rekey), so a
client certificate is accepted only when the access record lists its serial as issued
(:mod:`p2pswarm.api.remote`); what the key still allows is said in docs/operations.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from p2pswarm.security.errors import KeyFileError
from p2pswarm.security.pki import (
    BACKDATE,
    CA_LIFETIME,
    DAY,
    KEY_ENTROPY,
    MAX_CERT_BYTES,
    RENEW_FRACTION,
    _dt,
    _serial,
    _validity,
    ca_certificate,
    cert_digest,
    seal,
    unseal,
)

API_ORG = "p2pswarm api "
"""Prefix of the organisation of the API CA and of API server certificates; the cluster id follows."""
SEAL_CONTEXT = b"api-ca-key|"
"""Binds the sealed API CA key to its purpose and certificate (the digest follows): it can never be
opened as the cluster CA key or the join-token state, which are sealed under the same cluster key."""
SERVER_CERT_LIFETIME = 7 * DAY
"""Lifetime of a node's API server certificate.  It lives only in memory and is re-issued after
:data:`~p2pswarm.security.pki.RENEW_FRACTION` of it (~4.7 days) or at a restart, so a short life costs
nothing and bounds how long a copied server key stays useful."""


@dataclass(frozen=True)
class ApiCA:
    """The API CA's certificate (DER) and private key; ``cluster_id`` is read from the certificate."""

    cert_der: bytes
    key: ed25519.Ed25519PrivateKey

    @property
    def cert(self) -> x509.Certificate:
        return x509.load_der_x509_certificate(self.cert_der)

    @property
    def cluster_id(self) -> str:
        return _cluster_of(self.cert)  # type: ignore[return-value]

    @property
    def digest(self) -> bytes:
        return cert_digest(self.cert_der)

    @classmethod
    def create(cls, cluster_id: str, now: float, key_entropy: bytes, serial_entropy: bytes) -> "ApiCA":
        """A new self-signed API CA for ``cluster_id`` (valid for :data:`~p2pswarm.security.pki.CA_LIFETIME`)."""
        if type(key_entropy) is not bytes or len(key_entropy) != KEY_ENTROPY:
            raise ValueError(f"API CA key entropy must be {KEY_ENTROPY} bytes")
        key = ed25519.Ed25519PrivateKey.from_private_bytes(key_entropy)
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, API_ORG + cluster_id),
                          x509.NameAttribute(NameOID.COMMON_NAME, f"p2pswarm API CA {cluster_id}")])
        cert = ca_certificate(key, name, _serial(serial_entropy), now - BACKDATE, now + CA_LIFETIME, path_length=0)
        return cls(cert.public_bytes(serialization.Encoding.DER), key)

    def seal(self, cluster_key: bytes, nonce: bytes) -> bytes:
        """The private key sealed under the cluster key, for the access record."""
        return seal(cluster_key, nonce, self.key.private_bytes_raw(), SEAL_CONTEXT + self.digest)

    @classmethod
    def unseal(cls, cert_der: bytes, sealed_key: bytes, cluster_key: bytes) -> "ApiCA":
        """The API CA from the access record; KeyFileError (one line) for a wrong cluster key or bad data."""
        raw = unseal(cluster_key, sealed_key, SEAL_CONTEXT + cert_digest(cert_der), "the API CA key")
        try:
            cert = x509.load_der_x509_certificate(cert_der)
        except ValueError:
            raise KeyFileError("the API CA certificate in the Raft state is corrupt") from None
        key = ed25519.Ed25519PrivateKey.from_private_bytes(raw) if len(raw) == KEY_ENTROPY else None
        public = cert.public_key()
        if key is None or not isinstance(public, ed25519.Ed25519PublicKey) or _cluster_of(cert) is None \
                or public.public_bytes_raw() != key.public_key().public_bytes_raw():
            raise KeyFileError("the API CA key does not belong to its certificate (corrupt Raft state)")
        return cls(cert_der, key)


def check_cert(der: object) -> bool:
    """Shape check for the access record (pure, no parsing beyond size): DER bytes of sane size."""
    return type(der) is bytes and 0 < len(der) <= MAX_CERT_BYTES


def _cluster_of(cert: x509.Certificate) -> str | None:
    try:
        org = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value
    except (IndexError, ValueError):
        return None
    return org[len(API_ORG):] if isinstance(org, str) and org.startswith(API_ORG) and len(org) > len(API_ORG) \
        else None


def issue_server(ca: ApiCA, node_id: str, now: float, key_entropy: bytes, serial_entropy: bytes, *,
                 lifetime: float = SERVER_CERT_LIFETIME) -> tuple[bytes, bytes]:
    """(certificate DER, private key PEM) of this node's API server certificate, signed by the API CA."""
    ca_cert = ca.cert
    key = ed25519.Ed25519PrivateKey.from_private_bytes(key_entropy)
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, API_ORG + ca.cluster_id),
                         x509.NameAttribute(NameOID.COMMON_NAME, node_id)])
    end = min(now + lifetime, _validity(ca_cert)[1])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(_serial(serial_entropy))
            .not_valid_before(_dt(now - BACKDATE)).not_valid_after(_dt(end))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
            .sign(ca.key, None))
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.DER), pem


def server_due(not_before: float, not_after: float, now: float) -> bool:
    """True when a server certificate valid from ``not_before`` to ``not_after`` should be re-issued."""
    return now >= not_before + RENEW_FRACTION * (not_after - not_before)


def server_identity(der: bytes | None) -> tuple[str, str] | None:
    """(cluster id, node id) of a verified API server certificate (``getpeercert(binary_form=True)``), or None."""
    if not der:
        return None
    try:
        cert = x509.load_der_x509_certificate(der)
        node = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except Exception:
        return None
    cluster = _cluster_of(cert)
    if cluster is None or not isinstance(node, str) or not node or ExtendedKeyUsageOID.SERVER_AUTH not in usage:
        return None
    return cluster, node
