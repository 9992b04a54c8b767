"""The cluster CA and node certificates: issue, verify (every refusal reason), rotation, revocation, sealing."""

from __future__ import annotations

import dataclasses

import pytest
from cryptography import x509

from p2pswarm.security.errors import CertificateError, KeyFileError
from p2pswarm.security.keys import CurveKeys
from p2pswarm.security.pki import (
    BACKDATE,
    DAY,
    NODE_CERT_LIFETIME,
    CertAuthority,
    RevocationList,
    TrustBundle,
    cert_digest,
    fingerprint,
    finish_rotation,
    read_node_certificate,
    rotate_ca,
    seal,
    to_pem,
    unseal,
)

from .secworld import NOW, World


@pytest.fixture
def w() -> World:
    return World()


def refused(code: str, fn, *args, **kw) -> str:
    with pytest.raises(CertificateError) as info:
        fn(*args, **kw)
    assert info.value.code == code, str(info.value)
    message = str(info.value)
    assert "\n" not in message
    return message


# ------------------------------------------------------------------ the CA and node certificates

def test_ca_is_a_self_signed_ed25519_ca_of_its_cluster(w):
    cert = x509.load_der_x509_certificate(w.ca.cert_der)
    assert cert.issuer == cert.subject
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.signature_algorithm_oid == x509.oid.SignatureAlgorithmOID.ED25519
    assert w.ca.cluster_id == w.cluster_id
    assert w.ca.digest == cert_digest(w.ca.cert_der) and fingerprint(w.ca.cert_der).startswith("sha256:")
    assert "BEGIN CERTIFICATE" in to_pem(w.ca.cert_der)


def test_same_entropy_same_certificates():
    # Ed25519 signs deterministically and all entropy is injected: the PKI is reproducible.
    a, b = World(seed=7), World(seed=7)
    assert a.ca.cert_der == b.ca.cert_der
    assert a.sponsor_node.cert == b.sponsor_node.cert
    assert World(seed=8).ca.cert_der != a.ca.cert_der


def test_node_certificate_binds_id_name_cluster_and_the_curve_key(w):
    n = w.node("n1", "web-1")
    ident = w.bundle.verify(n.cert, NOW + 10)
    assert (ident.cluster_id, ident.node_id, ident.name) == (w.cluster_id, "n1", "web-1")
    assert ident.curve_public == n.keys.public
    assert ident.issuer == w.ca.digest
    assert ident.not_after - ident.not_before == pytest.approx(NODE_CERT_LIFETIME + BACKDATE)
    cert = x509.load_der_x509_certificate(n.cert)
    assert cert.public_key().public_bytes_raw() == n.keys.public  # the subject key IS the transport key
    assert read_node_certificate(n.cert).node_id == "n1"


def test_needs_renewal_after_two_thirds_of_the_lifetime(w):
    ident = w.bundle.verify(w.node("n1", "x").cert, NOW)
    assert not ident.needs_renewal(NOW + 59 * DAY)
    assert ident.needs_renewal(NOW + 61 * DAY)
    renewed = w.ca.renew(ident, NOW + 61 * DAY, w.entropy(16))
    again = w.bundle.verify(renewed, NOW + 61 * DAY)
    assert again.node_id == "n1" and again.curve_public == ident.curve_public
    assert again.serial != ident.serial and not again.needs_renewal(NOW + 62 * DAY)


def test_long_names_and_ids_fit(w):
    n = w.node("i" * 64, "n" * 128)
    assert w.bundle.verify(n.cert, NOW).name == "n" * 128


# ------------------------------------------------------------------ refusals

def test_expired(w):
    n = w.node("n1", "x")
    msg = refused("expired", w.bundle.verify, n.cert, NOW + NODE_CERT_LIFETIME + 1)
    assert "n1" in msg and "expired" in msg


def test_not_yet_valid_means_a_clock_far_off(w):
    n = w.node("n1", "x", now=NOW + 3600)  # issued by a node whose clock is an hour ahead
    msg = refused("not_yet_valid", w.bundle.verify, n.cert, NOW)
    assert "clock" in msg
    assert w.bundle.verify(w.node("n2", "y", now=NOW + BACKDATE - 5).cert, NOW).node_id == "n2"  # small skew is fine


def test_forged_certificate_from_a_look_alike_ca(w):
    # Same cluster id, same CA name, same extension: only the key differs.
    forger = CertAuthority.create(w.cluster_id, NOW, b"\x07" * 32, b"\x01" * 16)
    assert x509.load_der_x509_certificate(forger.cert_der).subject == w.ca.cert.subject
    forged = forger.issue("n1", "x", w.keys().public, NOW, b"\x02" * 16)
    msg = refused("wrong_ca", w.bundle.verify, forged, NOW)
    assert "not signed by this cluster's CA" in msg


def test_certificate_of_another_cluster(w):
    other = World(seed=2, cluster_id="0therc1u5ter0000")
    msg = refused("wrong_cluster", w.bundle.verify, other.sponsor_node.cert, NOW)
    assert "0therc1u5ter0000" in msg


def test_revoked_by_serial_and_by_node_id(w):
    n = w.node("n1", "x")
    ident = w.bundle.verify(n.cert, NOW)
    refused("revoked", w.bundle.verify, n.cert, NOW, revocations=w.revocations.revoke(serials=[ident.serial]))
    by_id = w.revocations.revoke(nodes=["n1"])
    refused("revoked", w.bundle.verify, n.cert, NOW, revocations=by_id)
    # a certificate issued to the removed id later (by a leader that had not seen the revocation) is revoked too
    refused("revoked", w.bundle.verify, w.node("n1", "x").cert, NOW, revocations=by_id)
    assert w.bundle.verify(w.node("n2", "y").cert, NOW, revocations=by_id).node_id == "n2"


def test_key_and_node_mismatch(w):
    n = w.node("n1", "x")
    refused("key_mismatch", w.bundle.verify, n.cert, NOW, expected_key=w.keys().public)
    refused("node_mismatch", w.bundle.verify, n.cert, NOW, expected_node="n2")
    assert w.bundle.verify(n.cert, NOW, expected_key=n.keys.public, expected_node="n1")


@pytest.mark.parametrize("der", [b"", b"\x30", b"garbage" * 10, b"\x00" * 5000, None, "text"])
def test_malformed(w, der):
    refused("malformed", w.bundle.verify, der, NOW)


def test_truncated_and_bit_flipped_certificates(w):
    cert = w.node("n1", "x").cert
    for cut in (1, 10, len(cert) // 2, len(cert) - 1):
        with pytest.raises(CertificateError):
            w.bundle.verify(cert[:cut], NOW)
    for i in range(len(cert)):
        for value in (cert[i] ^ 0x10, cert[i] ^ 0x01, 0x00, 0xff, 0x13):  # 0x13: PrintableString, a lazy-parse trap
            flipped = cert[:i] + bytes([value]) + cert[i + 1:]
            try:
                ident = w.bundle.verify(flipped, NOW)
            except CertificateError:
                continue
            # a change the DER parser normalises away must still describe the same, genuine certificate
            assert ident.node_id == "n1" and ident.serial == w.bundle.verify(cert, NOW).serial


def test_a_ca_certificate_is_not_a_node_certificate(w):
    refused("not_a_node_cert", w.bundle.verify, w.ca.cert_der, NOW)


def test_verify_reads_no_clock(w, monkeypatch):
    import time
    monkeypatch.setattr(time, "time", lambda: pytest.fail("verify read the clock"))
    monkeypatch.setattr(time, "monotonic", lambda: pytest.fail("verify read the clock"))
    assert w.bundle.verify(w.node("n1", "x").cert, NOW)


# ------------------------------------------------------------------ trust bundles and CA rotation

def test_bundle_refuses_bad_roots(w):
    other = World(seed=2, cluster_id="0therc1u5ter0000")
    with pytest.raises(CertificateError) as info:
        TrustBundle(w.cluster_id, [other.ca.cert_der])
    assert info.value.code == "wrong_cluster"
    with pytest.raises(CertificateError):
        TrustBundle(w.cluster_id, [w.sponsor_node.cert])  # a node certificate is no root
    with pytest.raises(CertificateError):
        TrustBundle(w.cluster_id, [])
    assert TrustBundle.decode(w.bundle.encode()).roots == w.bundle.roots
    with pytest.raises(CertificateError):
        TrustBundle.decode(b"\x93\x01\x02")


def test_ca_rotation_cross_signs_and_has_no_downtime(w):
    old_member = w.node("old", "old")
    new_ca, during = rotate_ca(w.ca, w.bundle, NOW + DAY, w.entropy(32), w.entropy(16), w.entropy(16))
    assert len(during.roots) == 2 and len(during.cross) == 1 and during.current == new_ca.cert_der
    renewed = new_ca.renew(w.bundle.verify(old_member.cert, NOW), NOW + DAY, w.entropy(16))
    t = NOW + DAY + 60
    # a node that applied the rotation trusts both generations
    assert during.verify(old_member.cert, t).node_id == "old"
    assert during.verify(renewed, t).issuer == new_ca.digest
    # a node that still trusts only the old root verifies the new certificate through the cross certificate
    refused("wrong_ca", w.bundle.verify, renewed, t)
    assert w.bundle.verify(renewed, t, chain=during.cross).node_id == "old"
    # after the rotation only new certificates verify
    after = finish_rotation(during)
    assert after.roots == (new_ca.cert_der,) and not after.cross
    assert after.verify(renewed, t).node_id == "old"
    refused("wrong_ca", after.verify, old_member.cert, t)
    refused("wrong_ca", after.verify, old_member.cert, t, chain=during.cross)
    assert "g2" in new_ca.cert.subject.rfc4514_string()


def test_a_cross_certificate_from_a_stranger_does_not_help(w):
    stranger = CertAuthority.create(w.cluster_id, NOW, b"\x09" * 32, b"\x03" * 16)
    mine = stranger.issue("n9", "x", w.keys().public, NOW, b"\x04" * 16)
    fake_cross = stranger.cross_sign(stranger.cert_der, NOW, b"\x05" * 16)
    refused("wrong_ca", w.bundle.verify, mine, NOW, chain=(fake_cross, stranger.cert_der))


def test_pinned_bundle_keeps_only_the_pin_and_what_it_cross_signed(w):
    new_ca, during = rotate_ca(w.ca, w.bundle, NOW, w.entropy(32), w.entropy(16), w.entropy(16))
    stranger = CertAuthority.create(w.cluster_id, NOW, b"\x09" * 32, b"\x03" * 16)
    offered = (*during.roots, *during.cross, stranger.cert_der)
    pinned_old = TrustBundle.pinned(w.cluster_id, offered, w.ca.digest, NOW)
    assert set(pinned_old.roots) == {w.ca.cert_der, new_ca.cert_der} and pinned_old.cross == during.cross
    pinned_new = TrustBundle.pinned(w.cluster_id, offered, new_ca.digest, NOW)
    assert pinned_new.roots == (new_ca.cert_der,)
    with pytest.raises(CertificateError) as info:
        TrustBundle.pinned(w.cluster_id, (stranger.cert_der,), w.ca.digest, NOW)
    assert info.value.code == "wrong_ca" and "pin" in str(info.value)


def test_expired_ca(w):
    short = CertAuthority.create(w.cluster_id, NOW, w.entropy(32), w.entropy(16), lifetime=10 * DAY)
    bundle = TrustBundle(w.cluster_id, [short.cert_der])
    cert = short.issue("n1", "x", w.keys().public, NOW, w.entropy(16))  # clipped to the CA's own end
    assert bundle.verify(cert, NOW).not_after <= NOW + 10 * DAY
    with pytest.raises(CertificateError) as info:
        bundle.verify(cert, NOW + 11 * DAY)
    assert info.value.code in ("ca_expired", "expired") and "\n" not in str(info.value)


# ------------------------------------------------------------------ revocation lists

def test_revocation_list_grows_only_and_versions(w):
    rl = RevocationList(w.cluster_id)
    a = rl.revoke(nodes=["n1"])
    b = a.revoke(serials=[5])
    assert (rl.version, a.version, b.version) == (0, 1, 2)
    assert b.revoke(nodes=["n1"]) is b
    assert a.newer(b) is b and b.newer(a) is b
    tie = dataclasses.replace(a, serials=frozenset({9}))
    assert a.newer(tie).serials == {9} and a.newer(tie).nodes == {"n1"}
    assert RevocationList.decode(b.encode()) == b
    for bad in (b"", b"\x91\x01", b.encode()[:-1], b"\x95\x01\xa1c\x00\x91\xff\x90"):
        with pytest.raises(CertificateError):
            RevocationList.decode(bad)


def test_signed_revocation_list(w):
    rl = w.revocations.revoke(nodes=["n1"])
    blob = rl.sign(w.ca)
    assert RevocationList.verify_signed(blob, w.bundle) == rl
    forger = CertAuthority.create(w.cluster_id, NOW, b"\x07" * 32, b"\x01" * 16)
    refused("wrong_ca", RevocationList.verify_signed, rl.sign(forger), w.bundle)
    import msgpack
    payload, signer, sig = msgpack.unpackb(blob)
    shrunk = msgpack.packb([RevocationList(w.cluster_id, 5).encode(), signer, sig])
    refused("wrong_ca", RevocationList.verify_signed, shrunk, w.bundle)
    refused("malformed", RevocationList.verify_signed, b"junk", w.bundle)


# ------------------------------------------------------------------ sealing the CA key

def test_ca_key_sealed_under_the_cluster_key(w):
    kek = w.entropy(32)
    sealed = w.ca.seal(kek, w.entropy(12))
    assert w.ca.key.private_bytes_raw() not in sealed
    back = CertAuthority.unseal(w.ca.cert_der, sealed, kek)
    assert back.digest == w.ca.digest
    assert w.bundle.verify(back.issue("n1", "x", w.keys().public, NOW, w.entropy(16)), NOW)


@pytest.mark.parametrize("case", ["wrong key", "truncated", "flipped", "empty", "other CA"])
def test_corrupt_or_wrong_sealed_ca_key_is_one_clear_line(w, case):
    kek = w.entropy(32)
    sealed = w.ca.seal(kek, w.entropy(12))
    cert = w.ca.cert_der
    if case == "wrong key":
        kek = w.entropy(32)
    elif case == "truncated":
        sealed = sealed[:20]
    elif case == "flipped":
        sealed = sealed[:-1] + bytes([sealed[-1] ^ 1])
    elif case == "empty":
        sealed = b""
    else:
        cert = World(seed=3).ca.cert_der
    with pytest.raises(KeyFileError) as info:
        CertAuthority.unseal(cert, sealed, kek)
    assert "\n" not in str(info.value) and "CA key" in str(info.value)


def test_seal_context_binds_the_purpose(w):
    kek, nonce = w.entropy(32), w.entropy(12)
    blob = seal(kek, nonce, b"secret", b"token")
    assert unseal(kek, blob, b"token") == b"secret"
    with pytest.raises(KeyFileError):
        unseal(kek, blob, b"ca-key")
    with pytest.raises(ValueError):
        seal(kek, b"short", b"x", b"y")


def test_ca_refuses_a_key_that_is_not_its_own(w):
    other = World(seed=4)
    with pytest.raises(CertificateError):
        CertAuthority(w.ca.cert_der, other.ca.key)


def test_curve_keys_in_certificates_are_x25519(w):
    keys = CurveKeys.from_secret(b"\x11" * 32)
    cert = w.ca.issue("n1", "x", keys.public, NOW, w.entropy(16))
    assert read_node_certificate(cert).curve_public == keys.public
