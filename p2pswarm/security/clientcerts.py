"""Client certificates for the remote API (pure: keys, entropy and time come in).

A client certificate is an X.509 leaf signed by the API CA (:mod:`p2pswarm.security.apica`, not the
cluster CA: ``node rm`` rotates that one) for an Ed25519 key
that the *client* made (``p2pswarm cluster client-cert`` keeps the private key on
the machine that runs it; only the public key travels):

* subject ``O = p2pswarm client <cluster id>``, ``OU = <role>``, ``CN = <name>``;
* extended key usage ``clientAuth`` only, so it cannot serve as a node's mesh leaf or a server;
* no p2pswarm identity extension: it is verified by OpenSSL in the TLS handshake, against the
  API CA certificate, and OpenSSL rejects a critical extension it does not know.

The TLS handshake checks the signature and the validity period (an expired or another
cluster's certificate never gets past it); :func:`client_identity` then reads what the
verified certificate says, and the listener (:mod:`p2pswarm.api.remote`) accepts it only when the
access record (:mod:`p2pswarm.security.access`) lists its serial as issued, with that role, and not revoked.

A *bundle* is a directory holding ``ca.pem`` (the API CA certificate), ``cert.pem``,
``key.pem`` and ``bundle.json`` (cluster id, name, role, serial, expiry), every file 0600.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from p2pswarm.security.access import ROLES
from p2pswarm.security.apica import ApiCA
from p2pswarm.security.pki import BACKDATE, DAY, _dt, _serial, _validity

CLIENT_ORG = "p2pswarm client "
"""Prefix of a client certificate's organisation; the cluster id follows."""
CLIENT_CERT_LIFETIME = 30 * DAY
"""Default lifetime of a client certificate: a month, so a lost laptop's bundle lapses on its own even if
nobody revokes it; ``--ttl`` sets another (at most the CA's remaining lifetime)."""
MAX_NAME = 64
BUNDLE_FILES = ("ca.pem", "cert.pem", "key.pem", "bundle.json")


class BundleError(ValueError):
    """A client bundle cannot be used (one line saying what to do)."""


@dataclass(frozen=True)
class ClientIdentity:
    cluster_id: str
    name: str
    role: str
    serial: str
    """Lower-case hex, as the access record keys it."""
    not_after: float


def check_name(name: Any) -> str:
    if type(name) is not str or not 1 <= len(name) <= MAX_NAME or not name.isprintable() or "/" in name:
        raise ValueError(f"a client name is 1 to {MAX_NAME} printable characters without '/', got {str(name)[:40]!r}")
    return name


def issue_client(ca: ApiCA, name: Any, role: Any, public_key: bytes, now: float, serial_entropy: bytes, *,
                 lifetime: float = CLIENT_CERT_LIFETIME) -> bytes:
    """A client certificate (DER) for the 32-byte Ed25519 ``public_key``; ValueError (one line) for bad input
    (``name`` and ``role`` come from a request body as they are, and are checked here)."""
    check_name(name)
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, got {str(role)[:20]!r}")
    if type(public_key) is not bytes or len(public_key) != 32:
        raise ValueError("public_key must be a 32-byte Ed25519 public key")
    key = ed25519.Ed25519PublicKey.from_public_bytes(public_key)
    ca_cert = ca.cert
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, CLIENT_ORG + ca.cluster_id),
                         x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
                         x509.NameAttribute(NameOID.COMMON_NAME, name)])
    end = min(now + lifetime, _validity(ca_cert)[1])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_cert.subject)
            .public_key(key).serial_number(_serial(serial_entropy))
            .not_valid_before(_dt(now - BACKDATE)).not_valid_after(_dt(end))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
            .sign(ca.key, None))
    return cert.public_bytes(serialization.Encoding.DER)


def client_identity(der: bytes | None) -> ClientIdentity | None:
    """What a client certificate says (from ``getpeercert(binary_form=True)`` after a verified handshake),
    or None when it is not a p2pswarm client certificate (e.g. a node's mesh leaf)."""
    if not der:
        return None
    try:
        cert = x509.load_der_x509_certificate(der)
        org = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value
        role = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value
        name = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        end = _validity(cert)[1]
    except Exception:
        return None
    if not isinstance(org, str) or not org.startswith(CLIENT_ORG) or role not in ROLES or not isinstance(name, str) \
            or list(usage) != [ExtendedKeyUsageOID.CLIENT_AUTH]:
        return None
    return ClientIdentity(org[len(CLIENT_ORG):], name, role, f"{cert.serial_number:x}", end)


# ------------------------------------------------------------------ bundles (the CLI's side)

def new_client_key(entropy: bytes) -> tuple[bytes, str]:
    """(raw public key, private key PEM) of a fresh Ed25519 key from 32 bytes of entropy."""
    key = ed25519.Ed25519PrivateKey.from_private_bytes(entropy)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode("ascii")
    return key.public_key().public_bytes_raw(), pem


def write_bundle(directory: Path, *, ca_pem: str, cert_pem: str, key_pem: str, info: dict[str, Any]) -> None:
    """Write a bundle directory (0700, files 0600); refuses to overwrite one (BundleError)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    existing = [f for f in BUNDLE_FILES if (directory / f).exists()]
    if existing:
        raise BundleError(f"{directory} already holds a client bundle ({', '.join(existing)}); choose another --out "
                          f"or remove it")
    for name, text in zip(BUNDLE_FILES, (ca_pem, cert_pem, key_pem, json.dumps(info, indent=2, sort_keys=True))):
        fd = os.open(directory / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)


def read_bundle_info(directory: Path) -> dict[str, Any]:
    """The bundle's ``bundle.json`` after checking that its files are there and private (BundleError)."""
    for name in BUNDLE_FILES:
        path = directory / name
        if not path.is_file():
            raise BundleError(f"{directory} is not a client bundle: {name} is missing (make one with "
                              f"`p2pswarm cluster client-cert NAME --role ROLE --out DIR`)")
    mode = (directory / "key.pem").stat().st_mode & 0o077
    if mode:
        raise BundleError(f"{directory / 'key.pem'} is readable by other users; run `chmod 600` on it")
    try:
        info = json.loads((directory / "bundle.json").read_text())
    except (OSError, ValueError) as exc:
        raise BundleError(f"{directory / 'bundle.json'} is unreadable: {exc}") from None
    if not isinstance(info, dict) or not isinstance(info.get("cluster_id"), str):
        raise BundleError(f"{directory / 'bundle.json'} does not name the cluster; make a new bundle")
    return info
