"""Turning ``--autolock`` on for a data dir that already holds plaintext data (its node stopped).

A node that joined without autolock can be encrypted at rest without leaving the cluster:
``p2pswarm up --autolock`` on its data dir rewrites the Raft log, the snapshot and the two key
files sealed under a new data key, then starts as any autolocked node.

Crash safety.  Everything sealed is first written *beside* the plaintext (``raft.sealing/``,
``security/<key file>.sealing``) and read back; writing the lock file is the commit point.  A
crash before it leaves the node as it was (the next attempt removes the leftovers); after it,
:func:`finish`, which every start of an autolocked node runs first, moves the sealed copies in
place and deletes the plaintext ones.  Every step of :func:`finish` can be repeated, so a
crash inside it is finished by the next start.

Deleted plaintext may survive in the disk's free blocks; data that must never touch the disk
unencrypted needs ``--autolock`` on a new data dir.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
from pathlib import Path
from typing import Callable

from p2pswarm.consensus.facts import stored_cluster_id
from p2pswarm.consensus.storage import FileStorage, StorageError
from p2pswarm.node.datadir import DataDir, fsync_dirs
from p2pswarm.security import autolock
from p2pswarm.security.errors import KeyFileError

log = logging.getLogger("p2pswarm.security")

STAGED = ".sealing"
"""Suffix of the sealed copies written before the commit point."""
OLD = ".plaintext"
"""Suffix of the plaintext Raft dir between the two renames of :func:`finish`."""
RAFT_FILES = {"CLUSTER", "wal", "snapshot", "LOCK"}
"""What :class:`FileStorage` keeps in a Raft dir (other files there are copied as they are)."""


def seal_existing(datadir: DataDir, unlock_key: bytes,
                  entropy: Callable[[int], bytes] = secrets.token_bytes) -> None:
    """Seal this (stopped) node's plaintext Raft log and key files under a new data key locked by
    ``unlock_key``.  One-line errors (KeyFileError, StorageError, DataDirError); on any of them
    the data dir is left as it was."""
    if autolock.has_lock(datadir):
        raise KeyFileError(f"{datadir.security_path / autolock.LOCK_FILE} already exists: this data dir already "
                           f"uses --autolock")
    remove_leftovers(datadir)
    try:
        _stage(datadir, unlock_key, entropy)
    except BaseException:
        if not autolock.has_lock(datadir):  # before the commit point: as if nothing happened
            remove_leftovers(datadir)
        raise
    try:
        finish(datadir)
    except Exception as exc:  # committed: the node's next start finishes the job
        log.warning("encrypting %s: moving the sealed copies in place failed (%s); the node's next start "
                    "finishes it", datadir.path, exc)


def _stage(datadir: DataDir, unlock_key: bytes, entropy: Callable[[int], bytes]) -> None:
    """Write the sealed copies, then the lock file (the commit point: nothing can fail after it)."""
    dek = entropy(autolock.KEY_BYTES)
    cipher = autolock.RecordCipher(dek)
    raft = datadir.path / "raft"
    cluster_id = stored_cluster_id(str(raft))
    if cluster_id is None and ((raft / "wal").exists() or (raft / "snapshot").exists()):
        raise StorageError(f"{raft} holds a raft log but no readable CLUSTER marker; refusing to encrypt it "
                           f"(restore the marker, or start this node from a fresh data dir)")
    if cluster_id is not None:
        _seal_raft(raft, _staged(raft), cluster_id, cipher)
    for name in autolock.KEY_FILES:
        data = datadir.read_private(name)
        if data is None:
            continue
        if autolock.is_sealed_file(data):
            raise KeyFileError(f"the key file {datadir.security_path / name} is already sealed but this data dir has "
                               f"no lock file; restore {datadir.security_path / autolock.LOCK_FILE} from a backup")
        datadir.write_private(name + STAGED, autolock.seal_key_file(cipher, name, data))
    autolock.write_lock(datadir, unlock_key, dek, entropy)  # the commit point


def finish(datadir: DataDir) -> bool:
    """Move sealed copies into place once the lock file exists (repeatable); True if anything moved."""
    if not autolock.has_lock(datadir):
        return False
    moved = False
    raft = datadir.path / "raft"
    staged, old = _staged(raft), raft.with_name(raft.name + OLD)
    if staged.exists():
        if raft.exists():
            if old.exists():
                shutil.rmtree(old)
            os.replace(raft, old)
        os.replace(staged, raft)
        moved = True
    for name in autolock.KEY_FILES:
        sealed = datadir.security_path / (name + STAGED)
        if sealed.exists():
            os.replace(sealed, datadir.security_path / name)
            moved = True
    if moved or old.exists():
        fsync_dirs(datadir.path, datadir.security_path)  # the sealed copies in place for good...
    if old.exists():
        shutil.rmtree(old)  # ...before the plaintext goes
    return moved


def remove_leftovers(datadir: DataDir) -> None:
    """Delete sealed copies of an attempt that crashed before its commit point (no lock file)."""
    shutil.rmtree(_staged(datadir.path / "raft"), ignore_errors=True)
    for name in autolock.KEY_FILES:
        (datadir.security_path / (name + STAGED)).unlink(missing_ok=True)


def _staged(raft: Path) -> Path:
    return raft.with_name(raft.name + STAGED)


def _seal_raft(src: Path, dst: Path, cluster_id: str, cipher: autolock.RecordCipher) -> None:
    """Write the Raft state of ``src`` sealed into ``dst`` and check it reads back the same."""
    plain = FileStorage(str(src), cluster_id)  # takes the Raft dir's lock: refuses a running node
    try:
        image = plain.load()
    finally:
        plain.close()
    sealed = FileStorage(str(dst), cluster_id, cipher=cipher)
    try:
        sealed.save(image.hard_state, tuple(image.entries), image.snapshot)
    finally:
        sealed.close()
    check = FileStorage(str(dst), cluster_id, cipher=cipher)
    try:
        again = check.load()
    finally:
        check.close()
    if again != image:
        raise StorageError(f"the encrypted copy of {src} does not read back the same; nothing was changed "
                           f"(the node stays unencrypted)")
    for extra in src.iterdir():
        if extra.is_file() and extra.name not in RAFT_FILES and not extra.name.endswith(".tmp"):
            shutil.copy2(extra, dst / extra.name)
            fd = os.open(dst / extra.name, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    fsync_dirs(dst)
