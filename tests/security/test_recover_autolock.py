"""`cluster recover --force-new-cluster` on an --autolock data dir: it needs the unlock key and stays encrypted."""

import pytest

from p2pswarm.consensus.messages import ConfChange, ConfState, Entry, decode_conf, encode_conf
from p2pswarm.consensus.raft import HardState
from p2pswarm.consensus.recovery import RecoveryError, force_new_cluster
from p2pswarm.consensus.storage import FileStorage
from p2pswarm.node.datadir import DataDir
from p2pswarm.security import autolock, sealing
from p2pswarm.security.autolock import WrongUnlockKey

KEY = b"\x09" * 32


@pytest.fixture
def voter(tmp_path):
    """The stopped data dir of voter n1 of {n1, n2, n3}, encrypted with autolock."""
    d = DataDir(tmp_path / "n1")
    d.prepare()
    d.save_state({"id": "n1"})
    st = FileStorage(str(d.path / "raft"), "c1")
    conf = encode_conf(ConfChange("bootstrap", "n1", ConfState(("n1", "n2", "n3"), ())))
    st.save(HardState(4, "n2", 2), (Entry(4, 1, "config", conf), Entry(4, 2, "normal", b"MARKER-XYZ")))
    st.close()
    sealing.seal_existing(d, KEY)
    yield d
    autolock.forget(d.path)


def test_recover_needs_the_unlock_key_and_keeps_the_log_encrypted(voter):
    with pytest.raises(RecoveryError, match="is encrypted .*--unlock-key-file"):
        force_new_cluster(voter.path)
    with pytest.raises(WrongUnlockKey):
        force_new_cluster(voter.path, autolock.format_unlock_key(b"\x01" * 32))
    done = force_new_cluster(voter.path, autolock.format_unlock_key(KEY))
    assert done["node"] == "n1" and done["old_voters"] == ["n1", "n2", "n3"] and done["index"] == 3
    assert autolock.cipher_for(voter.path) is None  # the key is not left unlocked in this process

    raft = voter.path / "raft"
    assert not [p for p in raft.iterdir() if b"MARKER-XYZ" in p.read_bytes() or b"bootstrap" in p.read_bytes()]
    st = FileStorage(str(raft), "c1", cipher=autolock.unlock(voter, autolock.format_unlock_key(KEY)))
    try:
        last = st.load().entries[-1]
    finally:
        st.close()
    assert last.kind == "config" and decode_conf(last.data).result.voters == ("n1",)


def test_an_unlock_key_for_a_plaintext_data_dir_is_refused(tmp_path):
    d = DataDir(tmp_path / "plain")
    d.prepare()
    with pytest.raises(RecoveryError, match="does not use --autolock"):
        force_new_cluster(d.path, autolock.format_unlock_key(KEY))
