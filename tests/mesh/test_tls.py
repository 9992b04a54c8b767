"""Encrypted forwarding between meshes (``--publish ...,encrypted``), in process on loopback: TLS to the
backend's node, TLS on both hops through a relay, and refusals (revoked node, another cluster's CA)."""

from __future__ import annotations

import asyncio
import os
import ssl

import pytest

from p2pswarm.mesh.proxy import Mesh
from p2pswarm.security.pki import CertAuthority
from p2pswarm.testing.meshtls import free_port_pair, throwaway_ca, tls_section

from .meshtest import LOOPS, arun, free_port
from .test_proxy import BACK_1, MESH_A, MESH_B, Backend, backend, hello, table

MESH_C = "127.0.7.3"
CA = throwaway_ca("c1", b"\x05")


def tls(node: str, authority: CertAuthority = CA, revoked: tuple[str, ...] = ()) -> dict:
    return tls_section(node, authority, revoked)


relay_ports = free_port_pair


def encrypted(task: str, target: Backend, via: str) -> dict:
    return {**backend(task, target, rtt=0.001, via=via), "tls": True}


@pytest.mark.parametrize("loop", LOOPS)
def test_encrypted_forwarding_to_the_backends_node_and_through_a_relay(loop: str, caplog) -> None:
    async def main() -> None:
        target = await Backend("behind", BACK_1).start()
        rp_b, rp_c = relay_ports(MESH_B), relay_ports(MESH_C)
        node_b = Mesh()  # runs the replica: its TLS relay connects to the local task
        await node_b.apply(table(MESH_B, {}, relay_port=rp_b, relay_allow=[target.addr], tls=tls("node-b")))
        node_c = Mesh()  # a relay with a direct link to B: goes on over TLS
        await node_c.apply(table(MESH_C, {}, relay_port=rp_c, relay_allow=[target.addr], tls=tls("node-c"),
                                 tls_next={target.addr: f"{MESH_B}:{rp_b + 1}"}))
        node_a = Mesh()
        direct, relayed = free_port(MESH_A), free_port(MESH_A)
        await node_a.apply(table(MESH_A, {
            direct: [encrypted("t1", target, f"{MESH_B}:{rp_b + 1}")],
            relayed: [encrypted("t1", target, f"{MESH_C}:{rp_c + 1}")],
        }, tls=tls("node-a")))
        assert node_b.status()["tls_relay"]["listening"] and node_a.status()["table_error"] is None
        for port in (direct, relayed):
            name, r, w = await hello(MESH_A, port)
            assert name == "behind"
            data = os.urandom(300_000)  # bulk: stays in the TLS layer (never spliced)
            w.write(data)
            w.write_eof()  # the half-close crosses both TLS hops: the backend answers all, then ends
            assert await r.read() == data
            w.close()
        assert node_b.status()["relay"]["relayed_in"] == 2  # both arrived at B over TLS
        assert node_c.status()["relay"]["relayed_in"] == 1
        assert node_a.status()["total"]["spliced"] == 0
        # B revokes A: A's TLS connection is refused after the handshake, and the client is closed
        await node_b.apply(table(MESH_B, {}, version=2, relay_port=rp_b, relay_allow=[target.addr],
                                 tls=tls("node-b", revoked=("node-a",))))
        r, w = await asyncio.open_connection(MESH_A, direct)
        assert await r.read() == b""
        w.close()
        assert node_b.status()["relay"]["tls_refused"] >= 1
        for mesh in (node_a, node_b, node_c):
            await mesh.close()
        await target.stop()
    arun(main(), loop)
    assert not [r for r in caplog.records if "eof_received" in r.getMessage()]  # no log noise per connection


def test_another_clusters_mesh_and_plaintext_cannot_use_the_tls_relay() -> None:
    async def main() -> None:
        target = await Backend("behind", BACK_1).start()
        rp_b = relay_ports(MESH_B)
        node_b = Mesh()
        await node_b.apply(table(MESH_B, {}, relay_port=rp_b, relay_allow=[target.addr], tls=tls("node-b")))
        other_ca = throwaway_ca("c1", b"\x06")
        stranger = Mesh()
        port = free_port(MESH_A)
        await stranger.apply(table(MESH_A, {port: [encrypted("t1", target, f"{MESH_B}:{rp_b + 1}")]},
                                   tls=tls("evil", other_ca)))
        r, w = await asyncio.open_connection(MESH_A, port)
        assert await r.read() == b""  # the handshake fails both ways: nothing reaches the backend
        w.close()
        # a plaintext relay header on the TLS port is not TLS: closed, nothing forwarded
        r, w = await asyncio.open_connection(MESH_B, rp_b + 1)
        w.write(b"P2PR\x01\x00\x0f" + target.addr.encode().ljust(15)[:15] + b"\x00")
        try:
            assert await asyncio.wait_for(r.read(), 10) == b""
        except (ConnectionResetError, ssl.SSLError):
            pass
        w.close()
        assert target.accepted == 0
        await stranger.close()
        await node_b.close()
        await target.stop()
    arun(main())
