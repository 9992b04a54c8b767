"""KernelPath: the node's side of the kernel path, with the nft commands faked."""

from __future__ import annotations

import asyncio
import logging

from p2pswarm.mesh.kernel import USERSPACE_CHOSEN, KernelPath
from p2pswarm.mesh.nft import NftError

TABLE = "p2pswarm_mesh_10_0_0_1_7946"


class FakeNft:
    """Records what the driver asks of nft; ``refuse`` makes probe() answer it, ``fail_runs`` fails applies."""

    def __init__(self, refuse: str | None = None, conntrack: bool = True) -> None:
        self.refuse, self.conntrack = refuse, conntrack
        self.scripts: list[str] = []
        self.removed: list[str] = []
        self.resets: list[list] = []
        self.fail_runs = False
        self.installed = False

    def probe(self):
        return self.refuse

    def forwarding(self):
        return True

    def remove(self, table):
        self.removed.append(table)
        self.installed = False

    def remove_all(self, tables):
        for table in tables:
            self.remove(table)
        return []

    def run(self, script):
        if self.fail_runs:
            raise NftError("Error: Could not process rule: No such file or directory")
        self.scripts.append(script)
        self.installed = True
        return 0.004

    def have_conntrack(self):
        return self.conntrack

    def reset_flows(self, host, flows):
        self.resets.append(list(flows))
        return len(flows)


def table(*ports: tuple[int, list[str]], host: str = "10.0.0.1") -> dict:
    return {"host": host, "ports": [{"port": p, "service": "s", "proxy_protocol": False,
                                     "backends": [{"task": a, "addr": a, "local": a.startswith(host + ":")}
                                                  for a in addrs]} for p, addrs in ports]}


def listed(t: dict) -> set:
    return {("tcp", p["port"], b["addr"]) for p in t["ports"] for b in p["backends"]}


async def settle(path: KernelPath) -> None:
    for _ in range(50):
        await asyncio.sleep(0.01)
        if path._worker is None or path._worker.done():
            return


def test_auto_applies_every_change_once_and_removes_its_table_at_close():
    async def main():
        ops = FakeNft()
        path = KernelPath("auto", TABLE, ops=ops)
        await path.start()
        assert ops.removed == [TABLE]  # what a crash left behind goes first
        t1 = table((8080, ["10.0.0.1:4000"]))
        path.push(t1, listed(t1))
        path.push(t1, listed(t1))  # collapsed: the same plan is applied once
        await settle(path)
        assert len(ops.scripts) == 1 and "8080 : goto tcp_1" in ops.scripts[0]
        assert path.path("tcp", 8080) == ("kernel", "")
        t2 = table((8080, ["10.0.0.1:4000"]), (9090, ["10.0.0.2:4000"]))
        path.push(t2, listed(t2))
        await settle(path)
        assert len(ops.scripts) == 2 and "add table" not in ops.scripts[1] and "9090" in ops.scripts[1]
        assert path.status()["kernel_ports"] == 2 and path.status()["applies"] == 2
        await path.close()
        assert ops.removed == [TABLE, TABLE] and not ops.installed
    asyncio.run(main())


def test_userspace_mode_never_installs_but_clears_what_an_earlier_run_left(caplog):
    async def main():
        ops = FakeNft()
        path = KernelPath("userspace", TABLE, ops=ops)
        with caplog.at_level(logging.WARNING):
            await path.start()
        t = table((8080, ["10.0.0.1:4000"]))
        path.push(t, listed(t))
        await settle(path)
        assert ops.scripts == [] and ops.removed == [TABLE]
        assert path.path("tcp", 8080) == ("userspace", USERSPACE_CHOSEN)
        assert not caplog.records
    asyncio.run(main())


def test_an_unusable_nftables_is_one_warning_and_user_space(caplog):
    async def main():
        ops = FakeNft(refuse="not root (nftables needs CAP_NET_ADMIN)")
        path = KernelPath("kernel", TABLE, ops=ops)
        with caplog.at_level(logging.WARNING):
            await path.start()
            for version in range(3):
                t = table((8080 + version, ["10.0.0.1:4000"]))
                path.push(t, listed(t))
            await settle(path)
        assert ops.scripts == [] and ops.removed == []
        assert [r.getMessage() for r in caplog.records] == [
            "routing mesh: kernel path unavailable (not root (nftables needs CAP_NET_ADMIN)); forwarding in user space"]
        assert path.path("tcp", 8082) == ("userspace", "not root (nftables needs CAP_NET_ADMIN)")
        assert path.status()["on"] is False
    asyncio.run(main())


def test_a_failed_apply_removes_the_table_and_falls_back_for_good(caplog):
    async def main():
        ops = FakeNft()
        path = KernelPath("auto", TABLE, ops=ops)
        await path.start()
        t1 = table((8080, ["10.0.0.1:4000"]))
        path.push(t1, listed(t1))
        await settle(path)
        ops.fail_runs = True
        t2 = table((8080, ["10.0.0.1:4000"]), (9090, ["10.0.0.1:4001"]))
        with caplog.at_level(logging.WARNING):
            path.push(t2, listed(t2))
            await settle(path)
        assert not ops.installed and ops.removed[-1] == TABLE  # nothing half installed
        assert len(caplog.records) == 1 and "nftables update failed" in caplog.records[0].getMessage()
        kind, why = path.path("tcp", 8080)
        assert kind == "userspace" and "No such file" in why
        ops.fail_runs = False
        path.push(t1, listed(t1))
        await settle(path)
        assert len(ops.scripts) == 1  # no second try
        assert path.status()["apply_errors"] == 1
    asyncio.run(main())


def test_flows_of_a_replica_that_is_gone_are_reset_and_a_missing_conntrack_is_one_warning(caplog):
    async def main():
        for conntrack in (True, False):
            ops = FakeNft(conntrack=conntrack)
            path = KernelPath("auto", TABLE, ops=ops)
            await path.start()
            both = table((8080, ["10.0.0.2:4000", "10.0.0.3:4000"]))
            path.push(both, listed(both))
            await settle(path)
            one = table((8080, ["10.0.0.2:4000"]))
            with caplog.at_level(logging.WARNING):
                caplog.clear()
                path.push(one, listed(one))
                await settle(path)
                path.push(both, listed(both))
                await settle(path)
                path.push(one, listed(one))
                await settle(path)
            if conntrack:
                assert ops.resets == [[("tcp", 8080, ("10.0.0.3", 4000))]] * 2
                assert path.status()["flows_reset"] == 2 and not caplog.records
            else:
                assert ops.resets == []
                assert len(caplog.records) == 1 and "conntrack" in caplog.records[0].getMessage()
    asyncio.run(main())
