"""Admission (which keys the transport admits), CURVE keys and key files, and the purity of the security cores."""

from __future__ import annotations

from pathlib import Path

import pytest
import zmq
import zmq.utils.z85

from p2pswarm.security.admission import Admission
from p2pswarm.security.errors import CertificateError, KeyFileError
from p2pswarm.security.keys import (
    CurveKeys,
    format_key_file,
    join_endpoint_keys,
    parse_key_file,
    z85_decode,
    z85_encode,
)
from p2pswarm.security.pki import DAY, NODE_CERT_LIFETIME, finish_rotation, rotate_ca

from ..test_purity import violations
from .secworld import NOW, World

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def w() -> World:
    return World()


def test_admits_verified_keys_only(w):
    adm = Admission(w.bundle)
    n = w.node("n1", "x")
    assert not adm.authorize(n.keys.public)
    ident = adm.admit(n.cert, NOW, addr="127.0.0.1:7000")
    assert adm.authorize(n.keys.public) and adm.identity(n.keys.public) == ident
    assert adm.peer_key("127.0.0.1:7000") == n.keys.public and adm.key_of("n1") == n.keys.public
    assert adm.peer_key("127.0.0.1:7001") is None
    assert adm.certificate("n1") == (n.cert, ())


@pytest.mark.parametrize("case", ["forged", "expired", "revoked", "other cluster", "garbage"])
def test_refuses_bad_certificates(w, case):
    adm = Admission(w.bundle, w.revocations.revoke(nodes=["bad"]))
    if case == "forged":
        cert = World(seed=9, cluster_id=w.cluster_id).node("bad2", "x").cert
    elif case == "expired":
        cert = w.node("bad2", "x", now=NOW - NODE_CERT_LIFETIME - DAY).cert
    elif case == "revoked":
        cert = w.node("bad", "x").cert
    elif case == "other cluster":
        cert = World(seed=9, cluster_id="0therc1u5ter0000").node("bad2", "x").cert
    else:
        cert = b"\x30\x03\x02\x01\x01"
    with pytest.raises(CertificateError):
        adm.admit(cert, NOW)
    assert adm.identities() == [] and sum(v for k, v in adm.counters.items() if k.startswith("refused_")) == 1


def test_revocation_cuts_a_node_off_at_once(w):
    adm = Admission(w.bundle)
    a, b = w.node("a", "a"), w.node("b", "b")
    adm.admit(a.cert, NOW, addr="h:1")
    adm.admit(b.cert, NOW, addr="h:2")
    dropped = adm.set_revocations(w.revocations.revoke(nodes=["a"]))
    assert [i.node_id for i in dropped] == ["a"]
    assert not adm.authorize(a.keys.public) and adm.peer_key("h:1") is None
    assert adm.authorize(b.keys.public)
    with pytest.raises(CertificateError):
        adm.admit(a.cert, NOW)  # and it cannot come back
    assert adm.set_revocations(w.revocations) == []  # an older list changes nothing
    assert adm.revocations.nodes == {"a"}


def test_expiry_and_refresh(w):
    adm = Admission(w.bundle)
    short = w.node("s", "s", lifetime=DAY)
    adm.admit(short.cert, NOW)
    adm.admit(w.node("l", "l").cert, NOW)
    assert adm.expire(NOW + 10) == []
    assert [i.node_id for i in adm.expire(NOW + 2 * DAY)] == ["s"]
    assert [i.node_id for i in adm.refresh(NOW + NODE_CERT_LIFETIME + DAY)] == ["l"]
    assert adm.identities() == []


def test_a_renewed_certificate_replaces_the_key_but_an_older_one_does_not(w):
    adm = Admission(w.bundle)
    old = w.node("n", "n")
    new = w.node("n", "n", now=NOW + DAY)
    adm.admit(old.cert, NOW + DAY)
    adm.admit(new.cert, NOW + DAY)
    assert adm.key_of("n") == new.keys.public and not adm.authorize(old.keys.public)
    adm.admit(old.cert, NOW + DAY)
    assert adm.key_of("n") == new.keys.public and adm.counters["refused_older"] == 1


def test_one_key_one_node(w):
    adm = Admission(w.bundle)
    a = w.node("a", "a")
    adm.admit(a.cert, NOW)
    stolen = w.ca.issue("b", "b", a.keys.public, NOW, w.entropy(16))
    with pytest.raises(CertificateError):
        adm.admit(stolen, NOW)
    adm.forget("a")
    assert not adm.authorize(a.keys.public) and adm.key_of("a") is None


def test_finishing_a_ca_rotation_drops_old_certificates(w):
    adm = Admission(w.bundle)
    old = w.node("old", "o")
    adm.admit(old.cert, NOW)
    new_ca, during = rotate_ca(w.ca, w.bundle, NOW, w.entropy(32), w.entropy(16), w.entropy(16))
    renewed = w.node("new", "n", ca=new_ca)
    assert adm.set_bundle(during, NOW) == []
    adm.admit(renewed.cert, NOW)
    assert [i.node_id for i in adm.set_bundle(finish_rotation(during), NOW)] == ["old"]
    assert adm.authorize(renewed.keys.public) and not adm.authorize(old.keys.public)


# ------------------------------------------------------------------ keys

def test_curve_keys_are_zeromq_curve_keys():
    keys = CurveKeys.from_secret(b"\x42" * 32)
    assert zmq.curve_public(zmq.utils.z85.encode(keys.secret)) == zmq.utils.z85.encode(keys.public)
    assert keys.public_z85 == zmq.utils.z85.encode(keys.public).decode()
    assert z85_decode(z85_encode(keys.secret)) == keys.secret
    assert keys.public_z85 in repr(keys) and z85_encode(keys.secret) not in repr(keys)
    with pytest.raises(ValueError):
        CurveKeys(b"x", b"y")
    with pytest.raises(ValueError):
        z85_decode("abc")


def test_the_join_endpoint_key_is_well_known():
    assert join_endpoint_keys() == join_endpoint_keys()
    assert zmq.curve_public(zmq.utils.z85.encode(join_endpoint_keys().secret)) == \
        zmq.utils.z85.encode(join_endpoint_keys().public)


def test_key_file_round_trip(w):
    keys = w.keys()
    assert parse_key_file(format_key_file(keys)) == keys
    assert parse_key_file(format_key_file(keys).encode()) == keys


@pytest.mark.parametrize("mutate", [
    lambda t: "",
    lambda t: "not a key file",
    lambda t: t.replace("secret", "sekret"),
    lambda t: t[:len(t) // 2],
    lambda t: t.replace("public ", "public x"),
    lambda t: t.replace("public ", "public ~~~~~"),
    lambda t: "\n".join(line if not line.startswith("public") else "public " + "0" * 40 for line in t.splitlines()),
    lambda t: t.encode("utf-16"),
    lambda t: b"\xff\xfe\x00garbage",
])
def test_corrupt_key_file_is_one_clear_line(w, mutate):
    with pytest.raises(KeyFileError) as info:
        parse_key_file(mutate(format_key_file(w.keys())), "/data/node.key")
    msg = str(info.value)
    assert "\n" not in msg and "/data/node.key" in msg


# ------------------------------------------------------------------ purity

@pytest.mark.parametrize("module", ["keys", "pki", "tokens", "messages", "join", "admission", "errors", "record"])
def test_security_cores_are_pure(module):
    path = ROOT / "p2pswarm" / "security" / f"{module}.py"
    assert violations(path.read_text(), str(path)) == []
