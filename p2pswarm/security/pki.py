"""The cluster CA, node certificates, trust bundles, CA rotation, revocation lists and sealed secrets.

**Why Ed25519 for the CA** (rather than ECDSA P-256): Ed25519 signatures are
deterministic (RFC 8032), so signing needs no randomness at all: a weak or
repeated ECDSA nonce leaks the CA key, an Ed25519 signature cannot.  That also
keeps this module pure: every key is made from entropy the caller passes in
(``from_private_bytes``), so tests and the simulator get reproducible
certificates and nothing here reads the OS RNG.  Keys and signatures are small
(32/64 bytes) and verification is fast (~0.1 ms).  P-256's advantage is reach
(TLS stacks, HSMs, FIPS); our certificates are verified only by p2pswarm, and
``cryptography`` signs X.509 with Ed25519 directly.

**What a node certificate binds.** The certificate's subject public key *is* the
node's CURVE transport key (X25519: CurveZMQ's own curve), so there is one key
and no second binding that could disagree.  A critical extension
(:data:`IDENTITY_OID`, an OCTET STRING holding msgpack ``[1, "node", cluster_id,
node_id, name]``) binds the cluster id, node id and name; the subject CN repeats
the node id for people reading it with ``openssl x509``.  CA certificates carry
the same extension with kind ``"ca"`` and are self-signed with CA:TRUE.

**Time.** Every check takes ``now`` as wall-clock UNIX seconds from the caller
(certificates are compared across machines, so not monotonic); this module never
reads a clock.  Certificates start :data:`BACKDATE` seconds before issue, which
absorbs small clock differences; a larger one shows up as ``not_yet_valid`` with
the offset in the message.  Node certificates last :data:`NODE_CERT_LIFETIME`
(90 days) and :meth:`NodeIdentity.needs_renewal` says when the leader should
re-issue one (after :data:`RENEW_FRACTION` of its lifetime).

**CA rotation with cross-signing** (:func:`rotate_ca`, :func:`finish_rotation`):
a new CA is made and the *old* key signs a second certificate for the new CA's
key and name (the cross certificate).  The bundle then trusts both roots; new
node certificates come from the new CA and are presented with the cross
certificate, so a node that still trusts only the old root (it has not applied
the rotation yet, or it was offline) verifies them through it.  Once every
member holds a new certificate, :func:`finish_rotation` drops the old root and
the cross certificate, and old certificates stop verifying: no downtime.

**Revocation** (:class:`RevocationList`): serials and node ids (node ids are
never reused, so revoking an id also covers certificates issued to it later by
a leader that had not seen the revocation).  The list grows only; each change
bumps its version; it is signed by the CA so that a member can gossip it and no
one can shrink it.

**Sealing** (:func:`seal`, :func:`unseal`): ChaCha20-Poly1305 under the 32-byte
cluster key with a context string as associated data.  The CA private key lives
in the Raft state only sealed (:meth:`CertAuthority.seal`).
"""

from __future__ import annotations

import datetime
import hashlib
from dataclasses import dataclass, field
from typing import Any, Iterable

import msgpack
from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.x509.oid import NameOID

from p2pswarm.security.errors import CertificateError, KeyFileError

DAY = 86_400.0
NODE_CERT_LIFETIME = 90 * DAY
"""Lifetime of a node certificate (seconds)."""
CA_LIFETIME = 10 * 365 * DAY
"""Lifetime of a CA certificate; rotate long before (``p2pswarm cluster ca --rotate``)."""
RENEW_FRACTION = 2 / 3
"""A certificate is due for renewal after this fraction of its lifetime (60 of 90 days)."""
BACKDATE = 300.0
"""Certificates start this many seconds before issue, to absorb small clock differences."""
MAX_CERT_BYTES = 4096
"""Largest certificate (DER) accepted from anyone; ours are ~400 bytes."""
MAX_CHAIN = 4
"""Cross certificates accepted with a presented certificate."""
MAX_REVOKED = 100_000
"""Entries in a revocation list (serials plus node ids)."""
KEK_BYTES = 32
NONCE_BYTES = 12
SERIAL_ENTROPY = 16
KEY_ENTROPY = 32

IDENTITY_OID = x509.ObjectIdentifier("2.25.258606949853321148200354182698894070806")
"""p2pswarm identity extension (a UUID-based OID, X.667: needs no registration)."""
IDENTITY_VERSION = 1

_SEAL_MAGIC = b"P2S1"
_SEAL_AD = b"p2pswarm-seal-v1|"
_UTC = datetime.timezone.utc


# ------------------------------------------------------------------ small helpers

def cert_digest(der: bytes) -> bytes:
    """SHA-256 of a certificate's DER: what join tokens pin."""
    return hashlib.sha256(der).digest()


def fingerprint(der: bytes) -> str:
    """Human form of :func:`cert_digest`, e.g. for ``p2pswarm cluster ca``."""
    return "sha256:" + cert_digest(der).hex()


def to_pem(der: bytes) -> str:
    return x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM).decode()


def _dt(now: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(now, _UTC)


def _serial(entropy: bytes) -> int:
    if type(entropy) is not bytes or len(entropy) < SERIAL_ENTROPY:
        raise ValueError(f"serial entropy must be at least {SERIAL_ENTROPY} bytes")
    return (int.from_bytes(entropy[:SERIAL_ENTROPY], "big") >> 1) | 1  # positive, < 2**127


def _der_octets(payload: bytes) -> bytes:
    n = len(payload)
    if n < 0x80:
        head = bytes([n])
    elif n < 0x100:
        head = bytes([0x81, n])
    else:
        head = bytes([0x82]) + n.to_bytes(2, "big")
    return b"\x04" + head + payload


def _der_unoctets(data: bytes) -> bytes:
    if len(data) < 2 or data[0] != 0x04:
        raise ValueError("not an OCTET STRING")
    first = data[1]
    if first < 0x80:
        n, start = first, 2
    elif first == 0x81 and len(data) >= 3:
        n, start = data[2], 3
    elif first == 0x82 and len(data) >= 4:
        n, start = int.from_bytes(data[2:4], "big"), 4
    else:
        raise ValueError("bad OCTET STRING length")
    if start + n != len(data):
        raise ValueError("OCTET STRING length mismatch")
    return data[start:]


def _identity_ext(kind: str, cluster_id: str, node_id: str = "", name: str = "") -> x509.UnrecognizedExtension:
    payload = msgpack.packb([IDENTITY_VERSION, kind, cluster_id, node_id, name], use_bin_type=True)
    return x509.UnrecognizedExtension(IDENTITY_OID, _der_octets(payload))


def _text(value: Any, lo: int, hi: int) -> str:
    if type(value) is not str or not lo <= len(value) <= hi:
        raise ValueError("bad identity field")
    return value


def _read_identity(cert: x509.Certificate) -> tuple[str, str, str, str]:
    """(kind, cluster_id, node_id, name) from the identity extension; ValueError when absent or bad."""
    try:
        ext = cert.extensions.get_extension_for_oid(IDENTITY_OID)
    except x509.ExtensionNotFound:
        raise ValueError("no p2pswarm identity extension") from None
    if not ext.critical:
        raise ValueError("the identity extension must be critical")
    fields = msgpack.unpackb(_der_unoctets(ext.value.value), raw=False, use_list=False)
    if type(fields) is not tuple or len(fields) != 5 or fields[0] != IDENTITY_VERSION:
        raise ValueError("unknown identity extension version")
    kind = fields[1]
    if kind not in ("ca", "node"):
        raise ValueError("unknown certificate kind")
    return kind, _text(fields[2], 1, 64), _text(fields[3], 0, 64), _text(fields[4], 0, 128)


def _raw(key: Any) -> bytes:
    try:
        return key.public_bytes_raw()
    except Exception:
        return b""


def _parse(der: Any, what: str) -> x509.Certificate:
    if type(der) is not bytes or not 0 < len(der) <= MAX_CERT_BYTES:
        raise CertificateError(f"{what} is not a certificate of at most {MAX_CERT_BYTES} bytes", "malformed")
    try:
        cert = x509.load_der_x509_certificate(der)
        # The parser is lazy: touch every part we use now, so hostile input fails here, once.
        cert.subject, cert.issuer, cert.extensions, cert.serial_number, cert.signature  # noqa: B018
        cert.tbs_certificate_bytes, cert.not_valid_before_utc, cert.not_valid_after_utc  # noqa: B018
        cert.public_key()
        return cert
    except Exception:  # the parser raises several types on hostile input
        raise CertificateError(f"{what} cannot be parsed as an X.509 certificate", "malformed") from None


def _validity(cert: x509.Certificate) -> tuple[float, float]:
    return cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp()


def _check_time(what: str, cert: x509.Certificate, now: float, expired_code: str) -> None:
    start, end = _validity(cert)
    if now < start:
        raise CertificateError(
            f"{what} is not valid yet: it starts {start - now:.0f} s after this node's clock; this node's "
            f"clock (or the issuer's) is off, fix it (NTP) and retry", "not_yet_valid")
    if now > end:
        raise CertificateError(
            f"{what} expired {now - end:.0f} s ago (at {_dt(end):%Y-%m-%d %H:%M:%S} UTC)"
            + ("; rotate the cluster CA with `p2pswarm cluster ca --rotate`" if expired_code == "ca_expired"
               else "; it should have been renewed automatically: rejoin the node with a fresh token"),
            expired_code)


# ------------------------------------------------------------------ identities

@dataclass(frozen=True, slots=True)
class NodeIdentity:
    """What a verified node certificate says."""

    cluster_id: str
    node_id: str
    name: str
    curve_public: bytes
    serial: int
    not_before: float
    not_after: float
    issuer: bytes
    """Digest of the trusted CA certificate whose key signed it: a root of the bundle, or the cross
    certificate through which it was verified when the bundle does not hold the signing root."""

    def needs_renewal(self, now: float, fraction: float = RENEW_FRACTION) -> bool:
        """True once ``fraction`` of the lifetime has passed (or it has lapsed)."""
        return now >= self.not_before + fraction * (self.not_after - self.not_before)

    def expires_in(self, now: float) -> float:
        return self.not_after - now


def ca_certificate(key: ed25519.Ed25519PrivateKey, name: x509.Name, serial: int, not_before: float,
                   not_after: float, *, path_length: int, signs_lists: bool = False,
                   identity: x509.UnrecognizedExtension | None = None) -> x509.Certificate:
    """A self-signed CA certificate of ``key``: the one shape shared by the cluster CA (which also signs
    revocation lists and carries the critical p2pswarm identity), its TLS twin and the remote API's CA."""
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
               .serial_number(serial).not_valid_before(_dt(not_before)).not_valid_after(_dt(not_after))
               .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=signs_lists, content_commitment=False,
                                            key_encipherment=False, data_encipherment=False, key_agreement=False,
                                            key_cert_sign=True, crl_sign=signs_lists, encipher_only=False,
                                            decipher_only=False), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))
    if identity is not None:
        builder = builder.add_extension(identity, critical=True)
    return builder.sign(key, None)


def _node_cert(der: bytes) -> tuple[x509.Certificate, str, str, str, x25519.X25519PublicKey]:
    """A parsed node certificate and what it claims: (cert, cluster id, node id, name, key); unverified."""
    cert = _parse(der, "the node certificate")
    try:
        kind, cluster_id, node_id, name = _read_identity(cert)
        key = cert.public_key()
    except Exception:
        raise CertificateError("the node certificate has no valid p2pswarm identity", "malformed") from None
    if kind != "node" or not node_id or not isinstance(key, x25519.X25519PublicKey):
        raise CertificateError("the certificate is not a p2pswarm node certificate", "not_a_node_cert")
    return cert, cluster_id, node_id, name, key


def read_node_certificate(der: bytes) -> NodeIdentity:
    """The identity a node certificate *claims*, unverified (for display, or before a bundle exists)."""
    cert, cluster_id, node_id, name, key = _node_cert(der)
    start, end = _validity(cert)
    return NodeIdentity(cluster_id, node_id, name, key.public_bytes_raw(), cert.serial_number, start, end, b"")


# ------------------------------------------------------------------ the CA

class CertAuthority:
    """The cluster CA: its certificate and private key (held only where the cluster key unsealed it)."""

    __slots__ = ("cert_der", "cert", "key", "cluster_id", "digest")

    def __init__(self, cert_der: bytes, key: ed25519.Ed25519PrivateKey) -> None:
        cert = _parse(cert_der, "the CA certificate")
        try:
            kind, cluster_id, _, _ = _read_identity(cert)
        except Exception:
            raise CertificateError("the CA certificate has no valid p2pswarm identity", "malformed") from None
        pub = key.public_key().public_bytes_raw()
        ca_pub = cert.public_key()
        if kind != "ca" or not isinstance(ca_pub, ed25519.Ed25519PublicKey) or ca_pub.public_bytes_raw() != pub:
            raise CertificateError("the CA key does not belong to the CA certificate", "key_mismatch")
        self.cert_der, self.cert, self.key = cert_der, cert, key
        self.cluster_id = cluster_id
        self.digest = cert_digest(cert_der)

    def __repr__(self) -> str:
        return f"CertAuthority(cluster={self.cluster_id}, {fingerprint(self.cert_der)[:23]}...)"

    @classmethod
    def create(cls, cluster_id: str, now: float, key_entropy: bytes, serial_entropy: bytes, *,
               lifetime: float = CA_LIFETIME, generation: int = 1) -> "CertAuthority":
        """A new self-signed cluster CA from 32 bytes of key entropy and 16 of serial entropy."""
        if type(key_entropy) is not bytes or len(key_entropy) != KEY_ENTROPY:
            raise ValueError(f"CA key entropy must be {KEY_ENTROPY} bytes")
        _text(cluster_id, 1, 64)
        key = ed25519.Ed25519PrivateKey.from_private_bytes(key_entropy)
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "p2pswarm"),
                          x509.NameAttribute(NameOID.COMMON_NAME, f"p2pswarm CA {cluster_id} g{generation}")])
        cert = ca_certificate(key, name, _serial(serial_entropy), now - BACKDATE, now + lifetime, path_length=1,
                              signs_lists=True, identity=_identity_ext("ca", cluster_id))
        return cls(cert.public_bytes(serialization.Encoding.DER), key)

    def issue(self, node_id: str, name: str, curve_public: bytes, now: float, serial_entropy: bytes, *,
              lifetime: float = NODE_CERT_LIFETIME) -> bytes:
        """A node certificate (DER) binding ``node_id``, ``name`` and the CURVE public key."""
        _text(node_id, 1, 64)
        _text(name, 0, 128)
        if type(curve_public) is not bytes or len(curve_public) != 32:
            raise ValueError("a CURVE public key is 32 bytes")
        end = min(now + lifetime, _validity(self.cert)[1])
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_id)])
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(self.cert.subject)
                .public_key(x25519.X25519PublicKey.from_public_bytes(curve_public))
                .serial_number(_serial(serial_entropy))
                .not_valid_before(_dt(now - BACKDATE)).not_valid_after(_dt(end))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                             data_encipherment=False, key_agreement=True, key_cert_sign=False,
                                             crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                               critical=False)
                .add_extension(_identity_ext("node", self.cluster_id, node_id, name), critical=True)
                .sign(self.key, None))
        return cert.public_bytes(serialization.Encoding.DER)

    def renew(self, identity: NodeIdentity, now: float, serial_entropy: bytes, *,
              lifetime: float = NODE_CERT_LIFETIME) -> bytes:
        """A fresh certificate for the same node, name and key (automatic renewal, or after CA rotation)."""
        return self.issue(identity.node_id, identity.name, identity.curve_public, now, serial_entropy,
                          lifetime=lifetime)

    def cross_sign(self, other_ca_der: bytes, now: float, serial_entropy: bytes) -> bytes:
        """A certificate for another CA's name and key, signed by this CA (the cross certificate)."""
        other = _parse(other_ca_der, "the new CA certificate")
        start, end = _validity(other)
        cert = (x509.CertificateBuilder().subject_name(other.subject).issuer_name(self.cert.subject)
                .public_key(other.public_key()).serial_number(_serial(serial_entropy))
                .not_valid_before(_dt(max(start, now - BACKDATE)))
                .not_valid_after(_dt(min(end, _validity(self.cert)[1])))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(_identity_ext("ca", self.cluster_id), critical=True)
                .sign(self.key, None))
        return cert.public_bytes(serialization.Encoding.DER)

    def sign(self, data: bytes) -> bytes:
        return self.key.sign(data)

    def seal(self, kek: bytes, nonce: bytes) -> bytes:
        """The private key sealed under the cluster key, for the Raft state."""
        return seal(kek, nonce, self.key.private_bytes_raw(), b"ca-key|" + self.digest)

    @classmethod
    def unseal(cls, cert_der: bytes, sealed_key: bytes, kek: bytes) -> "CertAuthority":
        """The CA from the Raft state; KeyFileError (one line) for a wrong cluster key or corrupt data."""
        raw = unseal(kek, sealed_key, b"ca-key|" + cert_digest(cert_der), "the cluster CA key")
        if len(raw) != KEY_ENTROPY:
            raise KeyFileError("the cluster CA key is corrupt (wrong length); restore the data dir from a backup")
        return cls(cert_der, ed25519.Ed25519PrivateKey.from_private_bytes(raw))


# ------------------------------------------------------------------ the trust bundle

@dataclass(frozen=True)
class _Issuer:
    subject: x509.Name
    key: ed25519.Ed25519PublicKey
    digest: bytes


class TrustBundle:
    """The CA certificates a node trusts: roots (self-signed) and cross certificates.

    Construction checks every certificate (a root must be a self-signed CA of
    ``cluster_id``; a cross certificate is kept as given and checked when used),
    so a bundle read from the Raft state or a grant is either sound or refused.
    """

    __slots__ = ("cluster_id", "roots", "cross", "_roots")

    def __init__(self, cluster_id: str, roots: Iterable[bytes], cross: Iterable[bytes] = ()) -> None:
        self.cluster_id = cluster_id
        self.roots = tuple(roots)
        self.cross = tuple(cross)
        if not self.roots or len(self.roots) > MAX_CHAIN or len(self.cross) > MAX_CHAIN:
            raise CertificateError(f"a trust bundle holds 1..{MAX_CHAIN} roots and at most {MAX_CHAIN} "
                                   f"cross certificates", "malformed")
        self._roots: list[tuple[_Issuer, x509.Certificate]] = []
        for der in self.roots:
            cert = _parse(der, "a CA certificate")
            key = self._ca_key(cert, "a CA certificate")
            try:
                cert.verify_directly_issued_by(cert)
            except Exception:
                raise CertificateError("a CA certificate of the trust bundle is not self-signed", "wrong_ca") from None
            self._roots.append((_Issuer(cert.subject, key, cert_digest(der)), cert))

    def _ca_key(self, cert: x509.Certificate, what: str) -> ed25519.Ed25519PublicKey:
        try:
            kind, cluster_id, _, _ = _read_identity(cert)
            constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
            key = cert.public_key()
        except Exception:
            raise CertificateError(f"{what} is not a p2pswarm CA certificate", "malformed") from None
        if kind != "ca" or not constraints.ca or not isinstance(key, ed25519.Ed25519PublicKey):
            raise CertificateError(f"{what} is not a p2pswarm CA certificate", "wrong_ca")
        if cluster_id != self.cluster_id:
            raise CertificateError(f"{what} belongs to cluster {cluster_id}, not {self.cluster_id}", "wrong_cluster")
        return key

    @property
    def digests(self) -> frozenset[bytes]:
        return frozenset(i.digest for i, _ in self._roots)

    @property
    def current(self) -> bytes:
        """The newest root (the one that issues new certificates)."""
        return self.roots[-1]

    def encode(self) -> bytes:
        return msgpack.packb([1, self.cluster_id, list(self.roots), list(self.cross)], use_bin_type=True)

    @classmethod
    def decode(cls, data: bytes) -> "TrustBundle":
        try:
            version, cluster_id, roots, cross = msgpack.unpackb(data, raw=False, use_list=False)
            ok = version == 1 and type(cluster_id) is str and type(roots) is tuple and type(cross) is tuple
        except Exception:
            ok = False
        if not ok:
            raise CertificateError("the trust bundle is corrupt", "malformed")
        return cls(cluster_id, roots, cross)

    @classmethod
    def pinned(cls, cluster_id: str, certs: Iterable[bytes], pin: bytes, now: float) -> "TrustBundle":
        """A joiner's bundle: the root whose digest is ``pin``, plus newer roots it cross-signed.

        Anything else a sponsor sent is ignored: trust starts at the pin (no trust on first use).
        """
        certs = tuple(certs)[:2 * MAX_CHAIN]
        root = next((c for c in certs if type(c) is bytes and cert_digest(c) == pin), None)
        if root is None:
            raise CertificateError("the cluster's CA does not match the token's CA digest (pin); the token is for "
                                   "another cluster or the peer is not who it claims", "wrong_ca")
        base = cls(cluster_id, (root,))
        roots, cross = [root], []
        for der in certs:
            if der is root or type(der) is not bytes:
                continue
            try:
                issuer = base._cross_issuer(der, now)
            except CertificateError:
                continue
            for other in certs:
                if other is not der and type(other) is bytes and other not in roots:
                    try:
                        cert = _parse(other, "a CA certificate")
                        if cert.subject == issuer.subject and _raw(cert.public_key()) == _raw(issuer.key):
                            cert.verify_directly_issued_by(cert)
                            roots.append(other)
                            cross.append(der)
                    except Exception:
                        continue
        return cls(cluster_id, roots[:MAX_CHAIN], cross[:MAX_CHAIN])

    def _cross_issuer(self, der: bytes, now: float) -> _Issuer:
        """A cross certificate checked against our roots: the CA key it certifies."""
        cert = _parse(der, "a cross certificate")
        key = self._ca_key(cert, "a cross certificate")
        for root, root_cert in self._roots:
            if root.subject == cert.issuer:
                try:
                    root.key.verify(cert.signature, cert.tbs_certificate_bytes)
                except InvalidSignature:
                    continue
                _check_time("the cluster CA certificate", root_cert, now, "ca_expired")
                _check_time("a cross-signed CA certificate", cert, now, "ca_expired")
                return _Issuer(cert.subject, key, b"")
        raise CertificateError("a cross certificate is not signed by a trusted CA", "wrong_ca")

    def issuers(self, now: float, chain: Iterable[bytes] = ()) -> list[tuple[_Issuer, x509.Certificate | None]]:
        out: list[tuple[_Issuer, x509.Certificate | None]] = list(self._roots)
        for der in (*self.cross, *tuple(chain)[:MAX_CHAIN]):
            try:
                cross = self._cross_issuer(der, now)
            except CertificateError:
                continue
            digest = next((i.digest for i, _ in self._roots if _raw(i.key) == _raw(cross.key)), b"")
            out.append((_Issuer(cross.subject, cross.key, digest or cert_digest(der)), None))
        return out

    def verify(self, der: bytes, now: float, *, revocations: "RevocationList | None" = None,
               chain: Iterable[bytes] = (), expected_key: bytes | None = None,
               expected_node: str | None = None) -> NodeIdentity:
        """Check a node certificate; CertificateError with ``code`` and one line naming the reason."""
        cert, cluster_id, node_id, name, key = _node_cert(der)
        if cluster_id != self.cluster_id:
            raise CertificateError(f"the certificate of node {node_id} is for cluster {cluster_id}, "
                                   f"not this cluster ({self.cluster_id})", "wrong_cluster")
        issuer = None
        for candidate, ca_cert in self.issuers(now, chain):
            if candidate.subject != cert.issuer:
                continue
            try:
                candidate.key.verify(cert.signature, cert.tbs_certificate_bytes)
            except InvalidSignature:
                continue
            if ca_cert is not None:
                _check_time("the cluster CA certificate", ca_cert, now, "ca_expired")
            issuer = candidate
            break
        if issuer is None:
            raise CertificateError(f"the certificate of node {node_id} is not signed by this cluster's CA "
                                   f"(forged, or from a rotated-out CA)", "wrong_ca")
        _check_time(f"the certificate of node {node_id}", cert, now, "expired")
        start, end = _validity(cert)
        identity = NodeIdentity(cluster_id, node_id, name, key.public_bytes_raw(), cert.serial_number, start, end,
                                issuer.digest)
        if revocations is not None and revocations.is_revoked(identity):
            raise CertificateError(f"the certificate of node {node_id} (serial {cert.serial_number:x}) is revoked "
                                   f"(the node was removed)", "revoked")
        if expected_key is not None and identity.curve_public != expected_key:
            raise CertificateError(f"the certificate of node {node_id} is for another transport key than the one "
                                   f"the peer uses", "key_mismatch")
        if expected_node is not None and node_id != expected_node:
            raise CertificateError(f"the certificate is for node {node_id}, not {expected_node}", "node_mismatch")
        return identity

    def verify_signature(self, data: bytes, signature: bytes, signer: bytes) -> bool:
        """True when ``signature`` over ``data`` is by the root whose digest is ``signer``."""
        for root, _ in self._roots:
            if root.digest == signer:
                try:
                    root.key.verify(signature, data)
                    return True
                except (InvalidSignature, ValueError):
                    return False
        return False


def rotate_ca(old: CertAuthority, bundle: TrustBundle, now: float, key_entropy: bytes,
              serial_entropy: bytes, cross_serial_entropy: bytes, *,
              lifetime: float = CA_LIFETIME) -> tuple[CertAuthority, TrustBundle]:
    """Begin a CA rotation: a new CA, cross-signed by ``old``; the bundle trusts both.

    Then re-issue every node certificate with the new CA (presented with the cross
    certificate) and, once all are re-issued, call :func:`finish_rotation`.
    """
    if old.digest not in bundle.digests:
        raise ValueError("the old CA is not a root of the bundle")
    generation = len(bundle.roots) + 1
    try:
        cn = old.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        generation = int(str(cn).rpartition(" g")[2]) + 1
    except (IndexError, ValueError):
        pass
    new = CertAuthority.create(old.cluster_id, now, key_entropy, serial_entropy, lifetime=lifetime,
                               generation=generation)
    cross = old.cross_sign(new.cert_der, now, cross_serial_entropy)
    roots = [r for r in bundle.roots][-(MAX_CHAIN - 1):] + [new.cert_der]
    return new, TrustBundle(bundle.cluster_id, roots, (*bundle.cross, cross)[-MAX_CHAIN:])


def finish_rotation(bundle: TrustBundle) -> TrustBundle:
    """End a rotation: only the newest root stays; older certificates stop verifying."""
    return TrustBundle(bundle.cluster_id, (bundle.current,))


# ------------------------------------------------------------------ revocation

@dataclass(frozen=True)
class RevocationList:
    """Revoked certificate serials and node ids; grows only, ``version`` counts changes."""

    cluster_id: str
    version: int = 0
    serials: frozenset[int] = field(default_factory=frozenset)
    nodes: frozenset[str] = field(default_factory=frozenset)

    def revoke(self, *, serials: Iterable[int] = (), nodes: Iterable[str] = ()) -> "RevocationList":
        serials, nodes = frozenset(serials) | self.serials, frozenset(nodes) | self.nodes
        if serials == self.serials and nodes == self.nodes:
            return self
        if len(serials) + len(nodes) > MAX_REVOKED:
            raise ValueError(f"a revocation list holds at most {MAX_REVOKED} entries")
        return RevocationList(self.cluster_id, self.version + 1, serials, nodes)

    def is_revoked(self, identity: NodeIdentity) -> bool:
        return identity.serial in self.serials or identity.node_id in self.nodes

    def newer(self, other: "RevocationList") -> "RevocationList":
        """The one to keep of two lists (gossip merge): the higher version, union on a tie."""
        if other.cluster_id != self.cluster_id or other.version < self.version:
            return self
        if other.version > self.version:
            return other
        return RevocationList(self.cluster_id, self.version, self.serials | other.serials, self.nodes | other.nodes)

    def encode(self) -> bytes:
        return msgpack.packb([1, self.cluster_id, self.version, sorted(self.serials), sorted(self.nodes)],
                             use_bin_type=True)

    @classmethod
    def decode(cls, data: bytes) -> "RevocationList":
        try:
            version, cluster_id, rl_version, serials, nodes = msgpack.unpackb(
                data, raw=False, use_list=False, max_array_len=MAX_REVOKED)
            ok = (version == 1 and type(cluster_id) is str and 0 < len(cluster_id) <= 64
                  and type(rl_version) is int and rl_version >= 0 and type(serials) is tuple and type(nodes) is tuple
                  and all(type(s) is int and s > 0 for s in serials)
                  and all(type(n) is str and 0 < len(n) <= 64 for n in nodes))
        except Exception:
            ok = False
        if not ok:
            raise CertificateError("the revocation list is corrupt", "malformed")
        return cls(cluster_id, rl_version, frozenset(serials), frozenset(nodes))

    def sign(self, ca: CertAuthority) -> bytes:
        """The list signed by the CA: safe to gossip, since no one else can produce a newer one."""
        payload = self.encode()
        return msgpack.packb([payload, ca.digest, ca.sign(b"p2pswarm-revocations-v1|" + payload)], use_bin_type=True)

    @staticmethod
    def signer(blob: bytes) -> bytes:
        """Digest of the CA that signed ``blob`` (b"" when it is not a signed list): after a CA rotation
        the leader signs the list again with the new CA before the old one stops being trusted."""
        try:
            _, signer, _ = msgpack.unpackb(blob, raw=False, use_list=False)
        except Exception:
            return b""
        return signer if type(signer) is bytes else b""

    @classmethod
    def verify_signed(cls, blob: bytes, bundle: TrustBundle) -> "RevocationList":
        try:
            payload, signer, signature = msgpack.unpackb(blob, raw=False, use_list=False)
            ok = type(payload) is bytes and type(signer) is bytes and type(signature) is bytes
        except Exception:
            ok = False
        if not ok:
            raise CertificateError("the signed revocation list is corrupt", "malformed")
        if not bundle.verify_signature(b"p2pswarm-revocations-v1|" + payload, signature, signer):
            raise CertificateError("the revocation list is not signed by this cluster's CA", "wrong_ca")
        rl = cls.decode(payload)
        if rl.cluster_id != bundle.cluster_id:
            raise CertificateError("the revocation list is for another cluster", "wrong_cluster")
        return rl


# ------------------------------------------------------------------ sealing

def seal(kek: bytes, nonce: bytes, plaintext: bytes, context: bytes) -> bytes:
    """Encrypt and authenticate ``plaintext`` under the 32-byte cluster key; ``context`` binds its purpose."""
    if type(kek) is not bytes or len(kek) != KEK_BYTES:
        raise ValueError(f"the cluster key is {KEK_BYTES} bytes")
    if type(nonce) is not bytes or len(nonce) != NONCE_BYTES:
        raise ValueError(f"a seal nonce is {NONCE_BYTES} bytes (never reuse one with the same key)")
    return _SEAL_MAGIC + nonce + ChaCha20Poly1305(kek).encrypt(nonce, plaintext, _SEAL_AD + context)


def unseal(kek: bytes, blob: bytes, context: bytes, what: str = "the sealed secret") -> bytes:
    """Inverse of :func:`seal`; KeyFileError (one line) for a wrong key or corrupt/truncated data."""
    if type(kek) is not bytes or len(kek) != KEK_BYTES:
        raise KeyFileError(f"cannot decrypt {what}: the cluster key is not {KEK_BYTES} bytes")
    if type(blob) is not bytes or len(blob) < len(_SEAL_MAGIC) + NONCE_BYTES + 16 or not blob.startswith(_SEAL_MAGIC):
        raise KeyFileError(f"{what} is corrupt or truncated; restore the data dir from a backup")
    nonce = blob[len(_SEAL_MAGIC):len(_SEAL_MAGIC) + NONCE_BYTES]
    try:
        return ChaCha20Poly1305(kek).decrypt(nonce, blob[len(_SEAL_MAGIC) + NONCE_BYTES:], _SEAL_AD + context)
    except InvalidTag:
        raise KeyFileError(f"cannot decrypt {what}: wrong cluster key (unlock key) or corrupt data") from None
