"""Join tokens: format, parsing (one clear line for each bad form), rotation, expiry, other clusters."""

from __future__ import annotations

import hmac

import pytest

from p2pswarm.security.errors import TokenError
from p2pswarm.security.tokens import RETIRED_KEPT, SECRET_BYTES, JoinToken, TokenState, parse_token

from .secworld import NOW, World


@pytest.fixture
def w() -> World:
    return World()


def token_error(code: str, fn, *args) -> str:
    with pytest.raises(TokenError) as info:
        fn(*args)
    assert info.value.code == code, str(info.value)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_format_and_parse(w):
    text = str(w.token)
    prefix, version, digest, secret = text.split("-")
    assert (prefix, version) == ("P2PS", "1")
    assert len(digest) == 52 and len(secret) == 32
    assert parse_token(text) == w.token
    assert parse_token(f"  {text.upper()}\n") == w.token  # case and surrounding whitespace do not matter
    assert w.token.ca_digest == w.ca.digest
    assert SECRET_BYTES * 8 >= 128


def test_repr_hides_the_secret(w):
    assert str(w.token).split("-")[3] not in repr(w.token)
    assert w.tokens.secret.hex() not in repr(w.tokens)


@pytest.mark.parametrize("text,code", [
    ("", "malformed"),
    ("   ", "malformed"),
    (None, "malformed"),
    ("SWMTKN-1-abc-def", "malformed"),
    ("P2PS-2-aaaa-bbbb", "version"),
    ("P2PS-x-aaaa-bbbb", "version"),
    ("P2PS-1-aaaa", "malformed"),
    ("P2PS-1-" + "a" * 52 + "-" + "a" * 31, "malformed"),
    ("P2PS-1-" + "a" * 51 + "-" + "a" * 32, "malformed"),
    ("P2PS-1-" + "a" * 52 + "-" + "1" * 32, "malformed"),   # 1 is not base32
    ("P2PS-1-" + "a" * 51 + "b-" + "a" * 32, "malformed"),  # non-zero padding bits: not canonical
    ("P2PS-1-" + "a" * 52 + "-" + "a" * 32 + "-x", "malformed"),
    ("P2PS-1-" + "a" * 200, "malformed"),
])
def test_bad_tokens_are_one_clear_line(text, code):
    msg = token_error(code, parse_token, text)
    assert "token" in msg


def test_rotation_refuses_the_old_token_and_says_so(w):
    old = w.token
    w.rotate_token()
    assert w.tokens.generation == 2 and w.token != old
    w.tokens.check(w.token, w.bundle.digests, NOW)
    msg = token_error("rotated", w.tokens.check, old, w.bundle.digests, NOW)
    assert "rotated" in msg


def test_only_a_few_retired_secrets_are_remembered(w):
    first = w.token
    for _ in range(RETIRED_KEPT + 1):
        w.rotate_token()
    assert len(w.tokens.retired) == RETIRED_KEPT
    token_error("wrong", w.tokens.check, first, w.bundle.digests, NOW)


def test_wrong_secret(w):
    forged = JoinToken(w.ca.digest, bytes(SECRET_BYTES))
    token_error("wrong", w.tokens.check, forged, w.bundle.digests, NOW)


def test_expired_token(w):
    w.rotate_token(lifetime=3600)
    w.tokens.check(w.token, w.bundle.digests, NOW + 3599)
    msg = token_error("expired", w.tokens.check, w.token, w.bundle.digests, NOW + 3601)
    assert "join-token --rotate" in msg


def test_token_of_another_cluster(w):
    other = World(seed=2, cluster_id="0therc1u5ter0000")
    msg = token_error("other_cluster", w.tokens.check, other.token, w.bundle.digests, NOW)
    assert "another cluster" in msg


def test_secrets_are_compared_in_constant_time(w, monkeypatch):
    calls = []
    real = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: calls.append(1) or real(a, b))
    w.tokens.check(w.token, w.bundle.digests, NOW)
    assert len(calls) >= 2  # the digest and the secret


def test_state_round_trip_and_corruption(w):
    w.rotate_token(lifetime=60)
    assert TokenState.decode(w.tokens.encode()) == w.tokens
    for bad in (b"", b"\x00", w.tokens.encode()[:-3], b"\x96\x01\xc4\x01x\x01\x00\xc0\x90"):
        token_error("malformed", TokenState.decode, bad)


def test_rotating_needs_new_entropy(w):
    with pytest.raises(ValueError):
        w.tokens.rotate(w.tokens.secret, NOW)
    with pytest.raises(ValueError):
        TokenState.create(b"short", NOW)
