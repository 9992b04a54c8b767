"""Encryption at rest: the unlock key's text, the lock file, record and key-file sealing."""

import pytest

from p2pswarm.node.datadir import DataDir
from p2pswarm.security import autolock
from p2pswarm.security.autolock import (
    DecryptError,
    RecordCipher,
    UnlockKeyError,
    WrongUnlockKey,
    format_unlock_key,
    parse_unlock_key,
)
from p2pswarm.security.errors import KeyFileError


@pytest.fixture
def datadir(tmp_path):
    d = DataDir(tmp_path / "d")
    d.prepare()
    yield d
    autolock.forget(d.path)


def test_unlock_key_text_round_trip():
    key = bytes(range(32))
    text = format_unlock_key(key)
    assert text.startswith("P2PSU-1-") and "=" not in text
    assert parse_unlock_key(text) == key
    assert parse_unlock_key("  " + text.lower() + "\n") == key  # case and whitespace forgiven


@pytest.mark.parametrize("text, why", [
    ("", "must start with P2PSU-1-"),
    ("P2PS-1-ABC", "must start with P2PSU-1-"),
    ("P2PSU-1-", "wrong length"),
    ("P2PSU-1-AAAA", "wrong length"),
    ("P2PSU-1-" + "1" * 58, "wrong length or characters"),
])
def test_malformed_unlock_keys_are_one_line(text, why):
    with pytest.raises(UnlockKeyError, match=why) as exc:
        parse_unlock_key(text)
    assert "\n" not in str(exc.value)


def test_a_typo_fails_the_checksum():
    text = format_unlock_key(b"\x01" * 32)
    i = len("P2PSU-1-") + 3
    typo = text[:i] + ("A" if text[i] != "A" else "B") + text[i + 1:]
    with pytest.raises(UnlockKeyError, match="checksum does not match"):
        parse_unlock_key(typo)


def test_lock_file_unlocks_with_the_right_key_only(datadir):
    key = autolock.new_unlock_key()
    made = autolock.create_lock(datadir, key)
    assert (datadir.security_path / "autolock").stat().st_mode & 0o777 == 0o600
    sealed = made.seal(b"secret", b"ad")
    autolock.forget(datadir.path)
    assert autolock.cipher_for(datadir.path / "raft") is None
    cipher = autolock.unlock(datadir, format_unlock_key(key))
    assert cipher.open(sealed, b"ad") == b"secret"
    assert autolock.cipher_for(datadir.path / "raft") is cipher
    with pytest.raises(WrongUnlockKey) as exc:
        autolock.unlock(datadir, format_unlock_key(autolock.new_unlock_key()))
    assert str(exc.value) == "wrong unlock key for this node's data (or the lock file is corrupt)"


def test_lock_file_is_never_replaced(datadir):
    autolock.create_lock(datadir, autolock.new_unlock_key())
    with pytest.raises(KeyFileError, match="already exists"):
        autolock.create_lock(datadir, autolock.new_unlock_key())


@pytest.mark.parametrize("damage", [lambda b: b[:-5], lambda b: b"junk" + b[4:], lambda b: b""])
def test_corrupt_lock_file_is_one_line(datadir, damage):
    key = autolock.new_unlock_key()
    autolock.create_lock(datadir, key)
    path = datadir.security_path / "autolock"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(KeyFileError, match="corrupt or truncated") as exc:
        autolock.unlock(datadir, format_unlock_key(key))
    assert "\n" not in str(exc.value)


def test_flipped_bit_in_lock_file_reads_as_wrong_key(datadir):
    key = autolock.new_unlock_key()
    autolock.create_lock(datadir, key)
    path = datadir.security_path / "autolock"
    data = bytearray(path.read_bytes())
    data[-3] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(WrongUnlockKey, match="wrong unlock key"):
        autolock.unlock(datadir, format_unlock_key(key))


def test_missing_lock_file(datadir):
    with pytest.raises(KeyFileError, match="is missing"):
        autolock.unlock(datadir, format_unlock_key(autolock.new_unlock_key()))


def test_record_cipher_refuses_tampering_and_other_ad():
    c = RecordCipher(b"k" * 32, nonce_source=lambda n: b"\0" * n)
    blob = c.seal(b"hello", b"wal")
    assert blob[:12] == b"\0" * 12 and b"hello" not in blob
    assert c.open(blob, b"wal") == b"hello"
    with pytest.raises(DecryptError):
        c.open(blob, b"snapshot")
    with pytest.raises(DecryptError):
        c.open(blob[:-1] + bytes([blob[-1] ^ 1]), b"wal")
    with pytest.raises(DecryptError):
        c.open(b"short", b"wal")
    with pytest.raises(DecryptError):
        RecordCipher(b"w" * 32).open(blob, b"wal")
    assert "k" * 8 not in repr(c)


def test_key_files_are_sealed_under_the_data_key(datadir):
    assert autolock.seal_file(datadir, "cluster.key", b"plain") == b"plain"  # no autolock: unchanged
    assert autolock.open_file(datadir, "cluster.key", b"plain") == b"plain"
    autolock.create_lock(datadir, autolock.new_unlock_key())
    sealed = autolock.seal_file(datadir, "cluster.key", b"MARKER-XYZ")
    assert b"MARKER-XYZ" not in sealed
    assert autolock.open_file(datadir, "cluster.key", sealed) == b"MARKER-XYZ"
    assert autolock.open_file(datadir, "cluster.key", None) is None
    with pytest.raises(KeyFileError, match="could not be decrypted"):
        autolock.open_file(datadir, "curve.key", sealed)  # bound to its name
    with pytest.raises(KeyFileError, match="not encrypted although this node uses --autolock"):
        autolock.open_file(datadir, "cluster.key", b"plain")
    autolock.forget(datadir.path)
    with pytest.raises(KeyFileError, match="is encrypted"):
        autolock.open_file(datadir, "cluster.key", sealed)


def test_unlock_key_file(tmp_path):
    key = format_unlock_key(b"\x07" * 32)
    f = tmp_path / "k"
    f.write_text(f"\n{key}\n")
    assert autolock.read_unlock_key_file(f) == key
    f.write_text("nonsense\n")
    with pytest.raises(UnlockKeyError, match=f"the unlock key file {f}: not an unlock key"):
        autolock.read_unlock_key_file(f)
    with pytest.raises(UnlockKeyError, match="cannot read the unlock key file"):
        autolock.read_unlock_key_file(tmp_path / "missing")
    f.write_text("")
    with pytest.raises(UnlockKeyError, match="is empty"):
        autolock.read_unlock_key_file(f)


def test_plaintext_data_lists_what_autolock_would_seal(datadir):
    assert autolock.plaintext_data(datadir) == []  # a new data dir: nothing to migrate
    (datadir.path / "raft").mkdir()
    (datadir.path / "raft" / "CLUSTER").write_text("p2pswarm-raft 1\nc1\n")
    datadir.write_private("curve.key", b"k")
    assert autolock.plaintext_data(datadir) == [datadir.path / "raft" / "CLUSTER", datadir.security_path / "curve.key"]


def test_the_key_files_autolock_seals_are_the_ones_the_node_writes():
    from p2pswarm.security import host
    assert autolock.KEY_FILES == (host.CURVE_FILE, host.CLUSTER_KEY_FILE)


def test_locked_api_answers_info_unlock_and_nothing_else(datadir):
    import json

    from p2pswarm.api.lock_routes import LockRoutes
    from p2pswarm.api.server import HttpError, Request

    key = autolock.new_unlock_key()
    autolock.create_lock(datadir, key)
    autolock.forget(datadir.path)
    events = []
    routes = LockRoutes(lambda: {"id": "n1"}, lambda text: autolock.unlock(datadir, text),
                        lambda: events.append("unlocked"), lambda: events.append("stop"))

    def post(body):
        return routes(Request("POST", "/v1/unlock", {}, json.dumps(body).encode()))
    assert json.loads(routes(Request("GET", "/v1/info", {})).body) == {"id": "n1", "state": "locked"}
    for path in ("/v1/members", "/v1/kv/x"):
        with pytest.raises(HttpError, match="is locked") as exc:
            routes(Request("GET", path, {}))
        assert exc.value.status == 503
    for body, status, why in [({}, 400, "missing"), ({"key": "nope"}, 400, "not an unlock key"),
                              ({"key": format_unlock_key(autolock.new_unlock_key())}, 403, "wrong unlock key")]:
        with pytest.raises(HttpError, match=why) as exc:
            post(body)
        assert exc.value.status == status and "\n" not in str(exc.value)
    assert autolock.cipher_for(datadir.path) is None and events == []
    ok = post({"key": format_unlock_key(key)})
    assert ok.status == 200 and autolock.cipher_for(datadir.path) is not None
    for action in ok.after:
        action()
    assert events == ["unlocked"]
    stop = routes(Request("POST", "/v1/shutdown", {}))
    for action in stop.after:
        action()
    assert events == ["unlocked", "stop"]
