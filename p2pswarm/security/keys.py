"""CURVE key pairs, Z85 text, key files, and the join endpoint's well-known key.

ZeroMQ CURVE is CurveZMQ: X25519 key agreement, XSalsa20-Poly1305 boxes.  A CURVE
key pair is therefore an X25519 key pair, which is also what a node certificate
carries as its subject public key (see :mod:`.pki`): the certificate binds a node
id to exactly the key the transport authenticates.

Pure: key material comes from entropy the caller passes in (the driver uses
``secrets.token_bytes``), so tests are reproducible and this module reads no clock,
no OS randomness and no disk.  Key *files* are parsed and formatted here as text;
the driver reads and writes them (mode 0600).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import x25519

from p2pswarm.security.errors import KeyFileError

KEY_BYTES = 32
KEY_FILE_HEADER = "p2pswarm-curve-key-v1"
CLUSTER_KEY_HEADER = "p2pswarm-cluster-key-v1"
JOIN_KEY_CONTEXT = b"p2pswarm join endpoint key v1"

_Z85 = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#"
_Z85_INDEX = {c: i for i, c in enumerate(_Z85)}


def z85_encode(data: bytes) -> str:
    """Z85 (ZeroMQ RFC 32) text of ``data``; its length must be a multiple of 4."""
    if len(data) % 4:
        raise ValueError("z85 encodes multiples of 4 bytes")
    out = []
    for i in range(0, len(data), 4):
        value = int.from_bytes(data[i:i + 4], "big")
        chunk = []
        for _ in range(5):
            value, digit = divmod(value, 85)
            chunk.append(_Z85[digit])
        out.extend(reversed(chunk))
    return "".join(out)


def z85_decode(text: str) -> bytes:
    """Bytes of Z85 ``text``; raises ValueError for a bad length, character or overflow."""
    if not isinstance(text, str) or len(text) % 5:
        raise ValueError("z85 text must be a multiple of 5 characters")
    out = bytearray()
    for i in range(0, len(text), 5):
        value = 0
        for c in text[i:i + 5]:
            digit = _Z85_INDEX.get(c)
            if digit is None:
                raise ValueError(f"invalid z85 character {c!r}")
            value = value * 85 + digit
        if value >= 1 << 32:
            raise ValueError("z85 group out of range")
        out += value.to_bytes(4, "big")
    return bytes(out)


@dataclass(frozen=True, slots=True)
class CurveKeys:
    """A CURVE (X25519) key pair as 32 raw bytes each; pyzmq accepts raw or Z85 keys."""

    public: bytes
    secret: bytes

    def __post_init__(self) -> None:
        if type(self.public) is not bytes or type(self.secret) is not bytes \
                or len(self.public) != KEY_BYTES or len(self.secret) != KEY_BYTES:
            raise ValueError("CURVE keys are 32 bytes each")

    def __repr__(self) -> str:  # never print the secret
        return f"CurveKeys(public={z85_encode(self.public)!r})"

    @classmethod
    def from_secret(cls, secret: bytes) -> "CurveKeys":
        """The key pair whose secret is ``secret`` (32 bytes, e.g. fresh entropy)."""
        if type(secret) is not bytes or len(secret) != KEY_BYTES:
            raise ValueError("a CURVE secret key is 32 bytes")
        key = x25519.X25519PrivateKey.from_private_bytes(secret)
        return cls(key.public_key().public_bytes_raw(), secret)

    @property
    def public_z85(self) -> str:
        return z85_encode(self.public)


def join_endpoint_keys() -> CurveKeys:
    """The CURVE server key of every join endpoint: one well-known key pair, the same for all clusters.

    A joiner knows only an address and its token, so it cannot know the sponsor's
    own key.  This key pair is public on purpose (its "secret" is derived from a
    constant): CURVE on the join endpoint then still gives forward-secret
    encryption against eavesdroppers (the session keys are ephemeral) and proves
    the *client's* key to the sponsor, but it does not authenticate the sponsor.
    That is the handshake's job: the grant's MAC needs the token secret, and its
    certificates must chain to the CA the token pins.  Being the same for every
    cluster and every CA generation, it lets a joiner with another cluster's (or a
    pre-rotation) token reach the sponsor and get a clear answer instead of a
    silent CURVE failure, and it survives CA rotation without rebinding.
    """
    return _JOIN_KEYS


def format_key_file(keys: CurveKeys) -> str:
    """Text of a node's key file (write it with mode 0600)."""
    return f"{KEY_FILE_HEADER}\npublic {z85_encode(keys.public)}\nsecret {z85_encode(keys.secret)}\n"


_HINT = "; restore it from a backup or move it away to join again as a new node"


def _key_fields(text: str | bytes, source: str, header: str, names: tuple[str, ...]) -> list[bytes]:
    """The Z85 fields ``names`` of a key file with ``header``; KeyFileError (one line) otherwise."""
    if isinstance(text, bytes):
        try:
            text = text.decode("ascii")
        except UnicodeDecodeError:
            raise KeyFileError(f"{source} is corrupt (not text){_HINT}") from None
    lines = text.strip().splitlines()
    if not lines or lines[0].strip() != header:
        raise KeyFileError(f"{source} is not a p2pswarm key file (expected the line {header!r}){_HINT}")
    fields = {}
    for line in lines[1:]:
        name, _, value = line.strip().partition(" ")
        fields[name] = value.strip()
    try:
        return [z85_decode(fields[name]) for name in names]
    except KeyError as exc:
        raise KeyFileError(f"{source} is truncated: no {exc.args[0]} key{_HINT}") from None
    except ValueError as exc:
        raise KeyFileError(f"{source} is corrupt: {exc}{_HINT}") from None


def format_cluster_key_file(key: bytes) -> str:
    """Text of the cluster key file (the 32-byte key-encryption key; write it with mode 0600)."""
    if type(key) is not bytes or len(key) != KEY_BYTES:
        raise ValueError("the cluster key is 32 bytes")
    return f"{CLUSTER_KEY_HEADER}\nkey {z85_encode(key)}\n"


def parse_cluster_key_file(text: str | bytes, source: str = "the cluster key file") -> bytes:
    """The 32-byte cluster key; KeyFileError with one line naming ``source`` for a corrupt file."""
    (key,) = _key_fields(text, source, CLUSTER_KEY_HEADER, ("key",))
    if len(key) != KEY_BYTES:
        raise KeyFileError(f"{source} is corrupt: the key must be 32 bytes{_HINT}")
    return key


def parse_key_file(text: str | bytes, source: str = "the key file") -> CurveKeys:
    """Parse a key file; a corrupt or truncated one raises KeyFileError with one line naming ``source``."""
    hint = _HINT
    public, secret = _key_fields(text, source, KEY_FILE_HEADER, ("public", "secret"))
    if len(public) != KEY_BYTES or len(secret) != KEY_BYTES:
        raise KeyFileError(f"{source} is corrupt: keys must be 32 bytes{hint}")
    keys = CurveKeys.from_secret(secret)
    if not hmac.compare_digest(keys.public, public):
        raise KeyFileError(f"{source} is corrupt: its public key does not belong to its secret key{hint}")
    return keys


_JOIN_KEYS = CurveKeys.from_secret(hashlib.sha256(JOIN_KEY_CONTEXT).digest())
