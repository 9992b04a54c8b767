"""Encryption at rest (``p2pswarm up --autolock``): the unlock key, the node's data key, record sealing.

Two keys:

* the **unlock key** (32 random bytes) stays with the operator, shown as text
  ``P2PSU-1-<base32 of key + 4-byte checksum, no padding>``; the checksum turns a
  typo into "malformed" rather than "wrong key".  Several nodes may share one
  (``up --unlock-key-file``).
* the **data key** (DEK, 32 random bytes, one per node) is what encrypts the
  Raft log, the snapshots and the key files ``security/curve.key`` and
  ``security/cluster.key``.  It is kept in ``<data-dir>/security/autolock``
  sealed under the unlock key (ChaCha20-Poly1305, :func:`p2pswarm.security.pki.seal`).

A restarted node therefore cannot read its own data until an operator gives it the
unlock key (``p2pswarm unlock``, or ``up --unlock-key-file``).  A wrong key, a
corrupt lock file or a tampered record is one line and a refusal; nothing falls
back to plaintext.

The unlocked data key lives only in this process: :func:`unlock` registers a
:class:`RecordCipher` for the data dir and the places that open the Raft log or
the key files ask :func:`cipher_for` (None when the node does not use autolock).
File I/O goes through :class:`~p2pswarm.node.datadir.DataDir` only.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import sys
from pathlib import Path
from typing import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from p2pswarm.node.datadir import DataDir, fsync_dirs
from p2pswarm.security.errors import KeyFileError
from p2pswarm.security.pki import seal, unseal

LOCK_FILE = "autolock"
"""``<data-dir>/security/autolock``: the data key sealed under the unlock key."""
KEY_PREFIX = "P2PSU-1-"
KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
_CHECK_BYTES = 4
_LOCK_MAGIC = b"p2pswarm-autolock 1\n"
_SEAL_OVERHEAD = 4 + NONCE_BYTES + TAG_BYTES  # pki.seal: magic, nonce, tag
_DEK_CONTEXT = b"autolock-dek"
_FILE_MAGIC = b"p2pswarm-sealed 1\n"
"""Prefix of a key file sealed under the data key."""
KEY_FILES = ("curve.key", "cluster.key")
"""The key files under ``security/`` sealed with autolock (:mod:`p2pswarm.security.keystore` writes them)."""

WRONG_KEY = "wrong unlock key for this node's data (or the lock file is corrupt)"


class UnlockKeyError(KeyFileError):
    """A malformed unlock key text or key file (one line)."""

    code = "unlock_key"


class WrongUnlockKey(KeyFileError):
    code = "wrong_unlock_key"


class DecryptError(ValueError):
    """A sealed record does not open: wrong key, or the data was changed."""


# ------------------------------------------------------------------ the unlock key

def new_unlock_key(entropy: Callable[[int], bytes] = secrets.token_bytes) -> bytes:
    key = entropy(KEY_BYTES)
    if type(key) is not bytes or len(key) != KEY_BYTES:
        raise ValueError("an unlock key is 32 bytes")
    return key


def _check(key: bytes) -> bytes:
    return hashlib.sha256(b"p2pswarm-unlock-key|" + key).digest()[:_CHECK_BYTES]


def format_unlock_key(key: bytes) -> str:
    if type(key) is not bytes or len(key) != KEY_BYTES:
        raise ValueError("an unlock key is 32 bytes")
    return KEY_PREFIX + base64.b32encode(key + _check(key)).decode().rstrip("=")


def parse_unlock_key(text: str) -> bytes:
    """The 32-byte unlock key from its text; UnlockKeyError (one line) for anything else."""
    if not isinstance(text, str):
        raise UnlockKeyError("the unlock key must be text (P2PSU-1-...)")
    text = text.strip()
    if not text.upper().startswith(KEY_PREFIX):
        raise UnlockKeyError(f"not an unlock key: it must start with {KEY_PREFIX} (as `p2pswarm up --autolock` "
                             f"printed it)")
    body = text[len(KEY_PREFIX):].upper()
    try:
        raw = base64.b32decode(body + "=" * (-len(body) % 8))
    except (ValueError, base64.binascii.Error):
        raw = b""
    if len(raw) != KEY_BYTES + _CHECK_BYTES:
        raise UnlockKeyError("malformed unlock key: wrong length or characters outside A-Z and 2-7; "
                             "copy it again exactly as printed")
    key, check = raw[:KEY_BYTES], raw[KEY_BYTES:]
    if _check(key) != check:
        raise UnlockKeyError("malformed unlock key: its checksum does not match (a typo?); "
                             "copy it again exactly as printed")
    return key


def read_unlock_key_file(path: str | os.PathLike[str]) -> str:
    """The unlock key text from a file (its first non-empty line; ``-``: standard input), checked;
    one line on failure."""
    if str(path) == "-":
        return check_key_text(sys.stdin.read(4096), "the unlock key on stdin")
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read(4096)
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not readable text"
        raise UnlockKeyError(f"cannot read the unlock key file {path}: {why}") from None
    return check_key_text(text, f"the unlock key file {path}")


def check_key_text(text: str, source: str = "the unlock key") -> str:
    """The first non-empty line of ``text``, parsed (so that a bad key is reported before anything starts)."""
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    if not line:
        raise UnlockKeyError(f"{source} is empty")
    try:
        parse_unlock_key(line)
    except UnlockKeyError as exc:
        raise UnlockKeyError(f"{source}: {exc}") from None
    return line


# ------------------------------------------------------------------ record sealing

class RecordCipher:
    """ChaCha20-Poly1305 with a fresh random 12-byte nonce per record: ``nonce || ciphertext+tag``.

    ``ad`` (associated data) binds a record to where it belongs (e.g. which file of which
    cluster), so a record copied elsewhere does not open.  ``nonce_source`` is injectable
    for tests; random 96-bit nonces stay safe for far more records than a node writes.
    """

    def __init__(self, key: bytes, nonce_source: Callable[[int], bytes] = os.urandom) -> None:
        if type(key) is not bytes or len(key) != KEY_BYTES:
            raise ValueError("a data key is 32 bytes")
        self._aead = ChaCha20Poly1305(key)
        self._nonce = nonce_source

    def seal(self, data: bytes, ad: bytes = b"") -> bytes:
        nonce = self._nonce(NONCE_BYTES)
        if type(nonce) is not bytes or len(nonce) != NONCE_BYTES:
            raise ValueError("a record nonce is 12 bytes")
        return nonce + self._aead.encrypt(nonce, bytes(data), ad)

    def open(self, blob: bytes, ad: bytes = b"") -> bytes:
        if len(blob) < NONCE_BYTES + TAG_BYTES:
            raise DecryptError("sealed record too short")
        try:
            return self._aead.decrypt(bytes(blob[:NONCE_BYTES]), bytes(blob[NONCE_BYTES:]), ad)
        except InvalidTag:
            raise DecryptError("sealed record does not open: wrong key or tampered data") from None

    def __repr__(self) -> str:  # never show key material
        return "RecordCipher(<key hidden>)"


# ------------------------------------------------------------------ the lock file

def has_lock(datadir: DataDir) -> bool:
    return datadir.has_private(LOCK_FILE)


def plaintext_data(datadir: DataDir) -> list[Path]:
    """The files autolock would seal that this data dir already holds unencrypted (none: a new dir)."""
    raft = datadir.path / "raft"
    used = [p for p in (raft / "CLUSTER", raft / "wal", raft / "snapshot") if p.exists()]
    return used + [datadir.security_path / n for n in KEY_FILES if datadir.has_private(n)]


def create_lock(datadir: DataDir, unlock_key: bytes,
                entropy: Callable[[int], bytes] = secrets.token_bytes, dek: bytes | None = None) -> RecordCipher:
    """Write this node's data key (a new one unless ``dek``) sealed under ``unlock_key``; register it (unlocked)."""
    if has_lock(datadir):
        raise KeyFileError(f"{datadir.security_path / LOCK_FILE} already exists; refusing to replace this "
                           f"node's data key")
    dek = entropy(KEY_BYTES) if dek is None else dek
    write_lock(datadir, unlock_key, dek, entropy)
    return register(datadir, dek)


def write_lock(datadir: DataDir, unlock_key: bytes, dek: bytes,
               entropy: Callable[[int], bytes] = secrets.token_bytes) -> None:
    """(Re)write the lock file: ``dek`` sealed under ``unlock_key`` (atomic: the old file or the new one,
    and durable before this returns: a rotated key must not come back after a power cut)."""
    datadir.write_private(LOCK_FILE, _LOCK_MAGIC + seal(unlock_key, entropy(NONCE_BYTES), dek, _DEK_CONTEXT))
    try:
        fsync_dirs(datadir.security_path)
    except OSError as exc:
        raise KeyFileError(f"cannot make {datadir.security_path / LOCK_FILE} durable: {exc.strerror or exc}") from None


def open_lock(datadir: DataDir, unlock_key: bytes) -> bytes:
    """The data key from the lock file; one line for a missing, corrupt file or a wrong key."""
    path = datadir.security_path / LOCK_FILE
    blob = datadir.read_private(LOCK_FILE)
    if blob is None:
        raise KeyFileError(f"the lock file {path} is missing: this node's encrypted data cannot be read without it; "
                           f"restore it from a backup")
    if not blob.startswith(_LOCK_MAGIC) or len(blob) != len(_LOCK_MAGIC) + _SEAL_OVERHEAD + KEY_BYTES:
        raise KeyFileError(f"the lock file {path} is corrupt or truncated; restore it from a backup "
                           f"(this node's data cannot be read without it)")
    try:
        return unseal(unlock_key, blob[len(_LOCK_MAGIC):], _DEK_CONTEXT, f"the lock file {path}")
    except KeyFileError:
        raise WrongUnlockKey(WRONG_KEY) from None


def unlock(datadir: DataDir, key_text: str) -> RecordCipher:
    """Check ``key_text`` against the lock file and register the data key; one-line KeyFileError otherwise."""
    return register(datadir, open_lock(datadir, parse_unlock_key(key_text)))


# ------------------------------------------------------------------ the unlocked keys of this process

_UNLOCKED: dict[Path, RecordCipher] = {}


def register(datadir: DataDir, dek: bytes) -> RecordCipher:
    """Use data key ``dek`` for ``datadir`` in this process (what a correct unlock key does; benchmarks
    call it directly)."""
    cipher = RecordCipher(dek)
    _UNLOCKED[Path(datadir.path).absolute()] = cipher
    return cipher


def cipher_for(path: str | os.PathLike[str] | DataDir) -> RecordCipher | None:
    """The cipher unlocked in this process for the data dir holding ``path`` (the dir or a path inside it)."""
    p = Path(path.path if isinstance(path, DataDir) else path).absolute()
    for candidate in (p, *p.parents):
        if candidate in _UNLOCKED:
            return _UNLOCKED[candidate]
    return None


def forget(path: str | os.PathLike[str]) -> None:
    """Drop the unlocked key of a data dir (the node stopped)."""
    _UNLOCKED.pop(Path(path).absolute(), None)


# ------------------------------------------------------------------ key files under the data key

def seal_file(datadir: DataDir, name: str, data: bytes) -> bytes:
    """What to write for key file ``name``: sealed under the data key with autolock, else ``data`` itself."""
    cipher = cipher_for(datadir)
    return data if cipher is None else seal_key_file(cipher, name, data)


def seal_key_file(cipher: RecordCipher, name: str, data: bytes) -> bytes:
    """Key file ``name``'s bytes sealed under ``cipher`` (bound to its name: files cannot be swapped)."""
    return _FILE_MAGIC + cipher.seal(data, b"keyfile|" + name.encode())


def is_sealed_file(data: bytes) -> bool:
    return data.startswith(_FILE_MAGIC)


def open_file(datadir: DataDir, name: str, data: bytes | None) -> bytes | None:
    """Inverse of :func:`seal_file`; a plaintext file under autolock, or the reverse, is refused (one line)."""
    if data is None:
        return None
    path = datadir.security_path / name
    cipher = cipher_for(datadir)
    sealed = is_sealed_file(data)
    if sealed and cipher is None:
        raise KeyFileError(f"the key file {path} is encrypted (--autolock) but this node has no unlocked data key "
                           f"(is {datadir.security_path / LOCK_FILE} missing?); restore the lock file")
    if not sealed and cipher is not None:
        raise KeyFileError(f"the key file {path} is not encrypted although this node uses --autolock; refusing "
                           f"it (restore it from a backup)")
    if cipher is None:
        return data
    try:
        return cipher.open(data[len(_FILE_MAGIC):], b"keyfile|" + name.encode())
    except DecryptError:
        raise KeyFileError(f"the key file {path} could not be decrypted: wrong key or tampered file; restore it "
                           f"from a backup") from None
