"""The data plane's TLS contexts from a table's ``tls`` section: loaded once, reused while unchanged,
one-line errors for junk, and the peer check (cluster, revoked node ids)."""

from __future__ import annotations

import os
import time

import pytest

from p2pswarm.mesh.tlsctx import ALPN, TlsError, parse_tls
from p2pswarm.security.meshtls import MeshTLS
from p2pswarm.security.pki import CertAuthority, TrustBundle


def section(node="node-a", revoked=()):
    ca = CertAuthority.create("c1", time.time(), b"\x01" * 32, b"\x01" * 16)
    m = MeshTLS(node)
    m.refresh(ca, TrustBundle("c1", [ca.cert_der]), time.time(), os.urandom)
    return {**m.material.as_dict(), "revoked": list(revoked)}


class FakeSSL:
    def __init__(self, der, alpn=ALPN):
        self.der, self.alpn = der, alpn

    def getpeercert(self, binary_form=False):
        return self.der

    def selected_alpn_protocol(self):
        return self.alpn


def test_contexts_are_built_once_and_reused_while_the_material_is_unchanged():
    s = section()
    first = parse_tls(s)
    again = parse_tls({**s, "revoked": ["x"]}, first)
    assert again.server is first.server and again.client is first.client and again.revoked == {"x"}
    assert parse_tls(None) is None


@pytest.mark.parametrize("bad", [
    "text", {"cluster_id": "c1"}, {"cluster_id": "c1", "cert": "x", "key": "y", "anchors": "z", "revoked": [1]},
    {"cluster_id": "c1", "cert": "not pem", "key": "not pem", "anchors": "not pem", "revoked": []},
])
def test_an_unusable_section_is_one_line(bad):
    with pytest.raises(TlsError) as info:
        parse_tls(bad)
    assert "\n" not in str(info.value) and str(info.value).startswith("table.tls")


def test_the_peer_check_refuses_other_clusters_and_revoked_nodes():
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    s = section("node-b")
    der = x509.load_pem_x509_certificate(s["cert"].encode()).public_bytes(serialization.Encoding.DER)
    config = parse_tls(section())
    assert config.admits(FakeSSL(der))
    assert not parse_tls({**section(), "revoked": ["node-b"]}).admits(FakeSSL(der))
    assert not parse_tls({**section(), "cluster_id": "c2"}).admits(FakeSSL(der))
    assert not config.admits(None) and not config.admits(FakeSSL(b"junk"))
    assert not config.admits(FakeSSL(der, alpn=None))  # a peer that did not agree on the framing inside
