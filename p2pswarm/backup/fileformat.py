"""The backup file: a versioned header anyone can read, and the cluster's contents sealed under a key.

Layout::

    MAGIC            16 bytes  b"p2pswarm-backup\\n"
    format           2 bytes   big-endian (FORMAT); fixed position, so any version can name another
    header length    4 bytes   big-endian
    header           JSON: cluster, created, index, key ("passphrase" | "unlock-key"),
                     kdf {name, salt, n, r, p}, cipher, nonce, verifier, size
    header digest    32 bytes  SHA-256 of everything before it
    sealed contents  ChaCha20-Poly1305 over zlib(msgpack(contents)); associated data: all of the above

*Why this shape.*  The header is readable without the key, so a restore can say which key it needs
(a passphrase or the old cluster's unlock key) and refuse a file of another format before asking.
Each way a file goes bad gets its own line: the digest tells a damaged header, ``size`` a truncated
file, the ``verifier`` (a hash of a second key from the same scrypt run) a wrong passphrase, and the
AEAD tag damaged contents.  The verifier lets a guesser test a passphrase no faster than the tag
already does: each guess costs one scrypt run (N = 2^17, r = 8: 128 MiB, 0.5-2 s of one core).
"""

from __future__ import annotations

import base64
import errno
import hashlib
import hmac
import json
import os
import secrets
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import msgpack
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

MAGIC = b"p2pswarm-backup\n"
FORMAT = 1
_PREFIX = struct.Struct(">HI")
DIGEST_BYTES = 32
MAX_HEADER_BYTES = 64 * 1024
KEY_PASSPHRASE = "passphrase"
KEY_UNLOCK = "unlock-key"
MIN_PASSPHRASE = 8
"""Characters a backup passphrase has at least (scrypt slows guessing; it cannot save a 4-letter word)."""


@dataclass(frozen=True)
class Kdf:
    """scrypt's cost: memory is 128 × n × r bytes.  Bounded when read, so a crafted header cannot make a
    restore allocate gigabytes."""

    n: int = 2 ** 17
    r: int = 8
    p: int = 1

    def check(self) -> None:
        if not (2 ** 10 <= self.n <= 2 ** 20 and self.n & (self.n - 1) == 0 and 1 <= self.r <= 32
                and 1 <= self.p <= 4 and 128 * self.n * self.r <= 512 * 2 ** 20):
            raise BackupError(f"the backup's key derivation (scrypt n={self.n}, r={self.r}, p={self.p}) is outside "
                              "what p2pswarm accepts; the file is corrupt or not made by p2pswarm")


DEFAULT_KDF = Kdf()


class BackupError(ValueError):
    """A backup cannot be written or read: one line naming why and what to do."""


@dataclass(frozen=True)
class Header:
    cluster: str
    created: float
    index: int
    """The applied Raft index the contents are the state at."""
    key: str
    """What seals it: KEY_PASSPHRASE or KEY_UNLOCK (the old cluster's unlock key)."""
    kdf: Kdf
    salt: bytes
    nonce: bytes
    verifier: bytes
    size: int
    """Bytes of the sealed contents."""
    summary: dict[str, int]
    """What it holds, by kind (shown before the key is asked for)."""


def check_passphrase(text: str) -> bytes:
    if len(text) < MIN_PASSPHRASE:
        raise BackupError(f"a backup passphrase has at least {MIN_PASSPHRASE} characters")
    return text.encode("utf-8")


def _keys(secret: bytes, salt: bytes, kdf: Kdf) -> tuple[bytes, bytes]:
    """The contents key and the verifier, from one scrypt run."""
    derived = Scrypt(salt=salt, length=64, n=kdf.n, r=kdf.r, p=kdf.p).derive(secret)
    return derived[:32], hashlib.sha256(b"p2pswarm-backup-verifier|" + derived[32:]).digest()[:16]


def seal_backup(contents: dict[str, Any], *, secret: bytes, key: str, cluster: str, index: int, created: float,
                summary: dict[str, int], kdf: Kdf | None = None,
                entropy: Callable[[int], bytes] = secrets.token_bytes) -> bytes:
    """The whole file for ``contents`` sealed under ``secret`` (a passphrase's bytes, or the unlock key);
    ``kdf``: scrypt's cost (DEFAULT_KDF unless given)."""
    kdf = DEFAULT_KDF if kdf is None else kdf
    if key not in (KEY_PASSPHRASE, KEY_UNLOCK):
        raise ValueError(f"unknown backup key kind {key!r}")
    salt, nonce = entropy(16), entropy(12)
    contents_key, verifier = _keys(secret, salt, kdf)
    plain = zlib.compress(msgpack.packb(contents, use_bin_type=True), 6)
    size = len(plain) + 16
    header = json.dumps({
        "cluster": cluster, "created": created, "index": index, "key": key, "summary": summary,
        "kdf": {"name": "scrypt", "n": kdf.n, "r": kdf.r, "p": kdf.p, "salt": _b64(salt)},
        "cipher": "chacha20-poly1305", "nonce": _b64(nonce), "verifier": _b64(verifier), "size": size,
    }, sort_keys=True).encode()
    head = MAGIC + _PREFIX.pack(FORMAT, len(header)) + header
    head += hashlib.sha256(head).digest()
    return head + ChaCha20Poly1305(contents_key).encrypt(nonce, plain, head)


def read_header(blob: bytes, source: str = "the backup") -> Header:
    """The header of a backup file; BackupError (one line) for anything but this format's intact header."""
    if not blob.startswith(MAGIC):
        if MAGIC.startswith(blob):
            raise BackupError(f"{source} is truncated ({len(blob)} bytes)")
        raise BackupError(f"{source} is not a p2pswarm backup (it does not start with {MAGIC[:-1].decode()!r})")
    fixed = len(MAGIC) + _PREFIX.size
    if len(blob) < fixed:
        raise BackupError(f"{source} is truncated ({len(blob)} bytes)")
    version, length = _PREFIX.unpack_from(blob, len(MAGIC))
    if version != FORMAT:
        newer = "a newer" if version > FORMAT else "an older"
        raise BackupError(f"{source} is backup format {version}, made by {newer} p2pswarm; this one reads format "
                          f"{FORMAT}: restore it with the p2pswarm version that made it")
    if length > MAX_HEADER_BYTES:
        raise BackupError(f"{source} is corrupt: its header claims {length} bytes")
    end = fixed + length + DIGEST_BYTES
    if len(blob) < end:
        raise BackupError(f"{source} is truncated ({len(blob)} bytes, its header alone is {end})")
    if not hmac.compare_digest(hashlib.sha256(blob[:fixed + length]).digest(), blob[fixed + length:end]):
        raise BackupError(f"{source} is corrupt: its header does not match its checksum")
    try:
        header = _decode_header(json.loads(blob[fixed:fixed + length]))
    except BackupError:
        raise
    except (ValueError, KeyError, TypeError) as exc:
        raise BackupError(f"{source} has a header p2pswarm cannot read ({exc}); the file is corrupt") from None
    if len(blob) != end + header.size:
        what = "truncated" if len(blob) < end + header.size else "corrupt: it has bytes after its end"
        raise BackupError(f"{source} is {what} ({len(blob)} bytes, expected {end + header.size})")
    return header


def open_backup(blob: bytes, secret: bytes, source: str = "the backup") -> tuple[Header, dict[str, Any]]:
    """The header and contents; BackupError (one line) for a damaged file or a wrong key."""
    header = read_header(blob, source)
    contents_key, verifier = _keys(secret, header.salt, header.kdf)
    if not hmac.compare_digest(verifier, header.verifier):
        what = "passphrase" if header.key == KEY_PASSPHRASE else "unlock key (it must be the backed-up cluster's)"
        raise BackupError(f"wrong {what} for {source}")
    start = len(blob) - header.size
    try:
        plain = ChaCha20Poly1305(contents_key).decrypt(header.nonce, blob[start:], blob[:start])
    except InvalidTag:
        raise BackupError(f"{source} is corrupt: its contents fail authentication (changed after it was "
                          "written)") from None
    try:
        contents = msgpack.unpackb(zlib.decompress(plain), raw=False, strict_map_key=False)
    except Exception as exc:  # authenticated, so only a bug of the writer gets here
        raise BackupError(f"{source} holds contents p2pswarm cannot decode ({type(exc).__name__})") from None
    if not isinstance(contents, dict):
        raise BackupError(f"{source} holds contents p2pswarm cannot decode (not a map)")
    return header, contents


def write_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``path`` whole or not at all: a temp file beside it, fsync, rename, fsync the directory.  A full
    disk (or any error) removes the temp file and is one line."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        if exc.errno != errno.EEXIST:
            tmp.unlink(missing_ok=True)
        why = "the disk is full" if exc.errno == errno.ENOSPC else exc.strerror or str(exc)
        raise BackupError(f"cannot write {target}: {why} (nothing was written)") from None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(value: Any, size: int | None = None) -> bytes:
    data = base64.b64decode(value, validate=True)
    if size is not None and len(data) != size:
        raise ValueError(f"a field is {len(data)} bytes, not {size}")
    return data


def _decode_header(h: Any) -> Header:
    kdf = h["kdf"]
    if kdf["name"] != "scrypt" or h["cipher"] != "chacha20-poly1305" or h["key"] not in (KEY_PASSPHRASE, KEY_UNLOCK):
        raise ValueError("unknown key derivation, cipher or key kind")
    params = Kdf(int(kdf["n"]), int(kdf["r"]), int(kdf["p"]))
    params.check()
    summary = h["summary"]
    if not isinstance(summary, dict) or not all(isinstance(v, int) for v in summary.values()):
        raise ValueError("bad summary")
    size = h["size"]
    if type(size) is not int or size < 16:
        raise ValueError("bad size")
    return Header(str(h["cluster"]), float(h["created"]), int(h["index"]), h["key"], params,
                  _unb64(kdf["salt"], 16), _unb64(h["nonce"], 12), _unb64(h["verifier"], 16), size, summary)
