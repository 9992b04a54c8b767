"""The periodic save of the security state file (p2pswarm/security/keystore.py ``save(background=True)``)
writes off the event loop, one write at a time, and the newest state is what stays on disk."""

from __future__ import annotations

import asyncio
import time

import msgpack

from p2pswarm.node.datadir import DataDir
from p2pswarm.security.keystore import STATE_FILE, Keystore
from p2pswarm.security.pki import CertAuthority, TrustBundle


def test_background_saves_leave_the_newest_state_on_disk(tmp_path):
    datadir = DataDir(tmp_path)
    datadir.prepare()
    keystore = Keystore(datadir)
    ca = CertAuthority.create("c1", time.time(), b"\x01" * 32, b"\x01" * 16)
    bundle = TrustBundle("c1", [ca.cert_der])

    async def main() -> None:
        for n in range(5):  # while the first write runs, the later ones wait: only the newest is written next
            peers = {f"peer{i}": (b"cert", (), (f"127.0.0.{i + 2}:7946",)) for i in range(n + 1)}
            keystore.save("c1", bundle, b"mine", (), peers, None, background=True)
        await keystore.settle()
    asyncio.run(main())
    state = msgpack.unpackb(datadir.read_private(STATE_FILE), raw=False)
    assert sorted(state["peers"]) == [f"peer{i}" for i in range(5)]
