"""Mesh TLS material: TLS twins of the CA that OpenSSL accepts, leaves per node, CA rotation, real handshakes."""

from __future__ import annotations

import os
import socket
import ssl
import threading
import time

import pytest

from p2pswarm.security.meshtls import MeshTLS, peer_identity, tls_anchor
from p2pswarm.security.pki import CertAuthority, TrustBundle, finish_rotation, rotate_ca

NOW = time.time()  # OpenSSL checks validity against the real clock


def ca(seed: int = 1) -> CertAuthority:
    return CertAuthority.create("c1", NOW, bytes([seed]) * 32, bytes([seed]) * 16)


def material(node: str, authority: CertAuthority, bundle: TrustBundle):
    m = MeshTLS(node)
    assert m.refresh(authority, bundle, NOW, os.urandom)
    return m.material


def context(side: str, mat, tmp) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if side == "server" else ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    cert, key = tmp / f"{side}.crt", tmp / f"{side}.key"
    cert.write_text(mat.cert_pem)
    key.write_text(mat.key_pem)
    ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(cadata=mat.anchors_pem)
    return ctx


def handshake(server_mat, client_mat, tmp) -> tuple[object, object]:
    """(what the client saw, what the server saw): the peer's (cluster, node) or the error text."""
    listener = socket.create_server(("127.0.0.1", 0))
    seen = {}

    def serve():
        conn, _ = listener.accept()
        try:
            with context("server", server_mat, tmp).wrap_socket(conn, server_side=True) as tls:
                seen["server"] = peer_identity(tls.getpeercert(binary_form=True))
                tls.sendall(b"ok")
        except (ssl.SSLError, OSError) as exc:
            seen["server"] = str(exc)
    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with context("client", client_mat, tmp).wrap_socket(
                socket.create_connection(listener.getsockname(), timeout=5)) as tls:
            tls.recv(2)
            client = peer_identity(tls.getpeercert(binary_form=True))
    except (ssl.SSLError, OSError) as exc:
        client = str(exc)
    thread.join(timeout=10)
    listener.close()
    return client, seen.get("server")


def test_every_member_makes_the_same_twin_and_openssl_verifies_leaves_against_it(tmp_path):
    authority = ca()
    assert tls_anchor(authority) == tls_anchor(CertAuthority(authority.cert_der, authority.key))
    bundle = TrustBundle("c1", [authority.cert_der])
    a, b = material("node-a", authority, bundle), material("node-b", authority, bundle)
    assert a.anchors_pem == b.anchors_pem
    assert handshake(a, b, tmp_path) == (("c1", "node-a"), ("c1", "node-b"))


def test_a_leaf_from_another_ca_is_refused_both_ways(tmp_path):
    ours, theirs = ca(1), ca(2)
    a = material("node-a", ours, TrustBundle("c1", [ours.cert_der]))
    evil = material("evil", theirs, TrustBundle("c1", [theirs.cert_der]))
    client, server = handshake(a, evil, tmp_path)
    assert "certificate verify failed" in client or "certificate verify failed" in str(server)
    assert server != ("c1", "evil")


def test_rotation_trusts_both_cas_then_only_the_new_one(tmp_path):
    old = ca(1)
    bundle = TrustBundle("c1", [old.cert_der])
    a, b, stale = MeshTLS("node-a"), MeshTLS("node-b"), MeshTLS("stale")
    for m in (a, b, stale):
        m.refresh(old, bundle, NOW, os.urandom)
    new, both = rotate_ca(old, bundle, NOW + 10, bytes([7]) * 32, bytes([7]) * 16, bytes([8]) * 16)
    for m in (a, b):  # both applied the rotation (one Raft entry): new CA key, new leaf, both anchors
        assert m.refresh(new, both, NOW + 10, os.urandom)
        assert m.material.anchors_pem.count("BEGIN CERTIFICATE") == 2
    assert handshake(a.material, b.material, tmp_path) == (("c1", "node-a"), ("c1", "node-b"))
    done = finish_rotation(both)
    assert a.refresh(new, done, NOW + 20, os.urandom) and a.material.anchors_pem.count("BEGIN CERTIFICATE") == 1
    client, server = handshake(a.material, stale.material, tmp_path)
    assert server != ("c1", "stale")  # after the rotation an old-CA leaf is refused
    b.refresh(new, done, NOW + 20, os.urandom)
    assert handshake(a.material, b.material, tmp_path) == (("c1", "node-a"), ("c1", "node-b"))


def test_leaf_is_renewed_after_two_thirds_of_its_life():
    authority = ca()
    bundle = TrustBundle("c1", [authority.cert_der])
    m = MeshTLS("node-a")
    m.refresh(authority, bundle, NOW, os.urandom)
    first = m.material
    assert not m.refresh(authority, bundle, NOW + 59 * 86400, os.urandom)
    assert m.refresh(authority, bundle, NOW + 61 * 86400, os.urandom) and m.material.cert_pem != first.cert_pem
    assert not m.refresh(None, bundle, NOW, os.urandom)  # no CA key here (yet): nothing to issue


@pytest.mark.parametrize("junk", [None, b"", b"not a certificate"])
def test_peer_identity_of_junk_is_none(junk):
    assert peer_identity(junk) is None
