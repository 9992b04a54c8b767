"""What an eavesdropper sees: no plaintext on the wire, and captured traffic cannot be replayed.

Two ways to capture: a TCP relay that records every byte between two CURVE
transports (always runs), and tcpdump on loopback (when tcpdump is installed and
may capture; skipped cleanly otherwise).  Each has a positive control: the same
kind of marker sent in plaintext *is* found, so an empty capture cannot pass.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time

import pytest

from p2pswarm.transport.zmq import ZmqTransport, parse_addr

from .secnet import GRACE, join, run, until

pytestmark = pytest.mark.timeout(30)

MARKER = b"P2PSWARM-PLAINTEXT-MARKER-7f3a9c"


class Tap:
    """A TCP relay to ``target`` that records each connection's client->server and server->client bytes."""

    def __init__(self, target: str) -> None:
        self.host, self.port = parse_addr(target)
        self.upstream: list[bytearray] = []
        self.downstream: list[bytearray] = []
        self._server: asyncio.Server | None = None
        self._tasks: list[asyncio.Task] = []
        self.addr = ""

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.addr = f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def _relay(self, reader, writer) -> None:
        up, down = bytearray(), bytearray()
        self.upstream.append(up)
        self.downstream.append(down)
        r2, w2 = await asyncio.open_connection(self.host, self.port)

        async def pump(src, dst, record):
            try:
                while data := await src.read(65536):
                    record += data
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                dst.close()
        self._tasks += [asyncio.ensure_future(pump(reader, w2, up)), asyncio.ensure_future(pump(r2, writer, down))]

    def everything(self) -> bytes:
        return b"".join(bytes(b) for b in (*self.upstream, *self.downstream))

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            self._server.close()


def test_relay_capture_has_no_plaintext_and_replays_deliver_nothing():
    async def scenario(w, sponsor, made):
        member, _ = await join(w, sponsor, w.joiner(node_id="m3mbe40000000001", name="member"))
        made.append(member)
        tap = Tap(sponsor.addr)
        await tap.start()
        made.append(tap)
        member.admission.bind_addr(tap.addr, w.sponsor_node.node_id)  # the member reaches the sponsor via the tap
        for i in range(3):
            assert member.transport.send(tap.addr, MARKER + b" probe %d" % i)
        member.transport.send(tap.addr, MARKER * 100, bulk=True)
        await until(lambda: len(sponsor.inbox) == 4, "the four messages through the tap")
        assert all(MARKER in m for m in sponsor.inbox)
        captured = tap.everything()
        assert len(captured) > 400 * 4 and MARKER not in captured and MARKER[:12] not in captured
        # replay every captured client->server stream on fresh connections straight to the sponsor
        received = sponsor.transport.stats()["received"]
        for stream in tap.upstream:
            reader, writer = await asyncio.open_connection(*parse_addr(sponsor.addr))
            writer.write(bytes(stream))
            await writer.drain()
            try:
                await asyncio.wait_for(reader.read(65536), GRACE)
            except asyncio.TimeoutError:
                pass
            writer.close()
        await asyncio.sleep(GRACE)
        assert sponsor.transport.stats()["received"] == received and len(sponsor.inbox) == 4

        # positive control: the same relay sees a plaintext transport's marker
        plain_a, plain_b = ZmqTransport("127.0.0.1:0"), ZmqTransport("127.0.0.1:0")
        await plain_a.start()
        await plain_b.start()
        control = Tap(plain_b.local_addr)
        await control.start()
        try:
            plain_a.send(control.addr, MARKER)
            assert await asyncio.wait_for(plain_b.recv(), 5) == MARKER
            assert MARKER in control.everything()
        finally:
            await control.close()
            await plain_a.close()
            await plain_b.close()
    run(scenario)


def test_join_traffic_is_encrypted_too():
    async def scenario(w, sponsor, made):
        tap = Tap(sponsor.join_server.addr)
        await tap.start()
        made.append(tap)
        name = MARKER.decode()
        joiner = w.joiner(node_id="j01ne40000000001", name=name)
        from p2pswarm.security.joinchannel import exchange
        reply = await exchange(tap.addr, joiner.keys, joiner.request(time.time(), w.entropy(16)))
        result = joiner.handle(reply, time.time())
        assert result.identity.name == name
        captured = tap.everything()
        assert captured and MARKER not in captured and w.cluster_key not in captured
        assert result.cert not in captured  # even the certificate travels encrypted
    run(scenario)


def _tcpdump_usable() -> str | None:
    path = shutil.which("tcpdump")
    if path is None:
        return None
    if os.geteuid() != 0:
        return None
    return path


@pytest.mark.skipif(_tcpdump_usable() is None, reason="needs tcpdump and root to capture on loopback")
def test_tcpdump_on_loopback_finds_no_plaintext(tmp_path):
    pcap = tmp_path / "lo.pcap"

    async def scenario(w, sponsor, made):
        member, _ = await join(w, sponsor, w.joiner(node_id="m3mbe40000000001", name="member"))
        made.append(member)
        plain_a, plain_b = ZmqTransport("127.0.0.1:0"), ZmqTransport("127.0.0.1:0")
        await plain_a.start()
        await plain_b.start()
        ports = [parse_addr(a)[1] for a in (sponsor.addr, member.addr, sponsor.join_server.addr, plain_b.local_addr)]
        flt = " or ".join(f"tcp port {p}" for p in ports)
        proc = subprocess.Popen([_tcpdump_usable(), "-i", "lo", "--immediate-mode", "-U", "-n", "-s", "0", "-Z", "root",
                                 "-w", str(pcap), flt], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            line = await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(None, proc.stderr.readline), 10)
            if b"listening" not in line:
                pytest.skip(f"tcpdump cannot capture here: {line.decode(errors='replace').strip()}")
            # a join through the endpoint (its name is the marker), then gossip-sized and bulk messages
            joiner = w.joiner(node_id="j01ne40000000001", name=MARKER.decode())
            made.append((await join(w, sponsor, joiner))[0])
            for i in range(5):
                member.transport.send(sponsor.addr, MARKER + b" %d" % i)
                sponsor.transport.send(member.addr, MARKER + b" back %d" % i)
            await until(lambda: len(sponsor.inbox) >= 5 and len(member.inbox) >= 5, "the marked messages")
            plain_a.send(plain_b.local_addr, b"CONTROL-" + MARKER)  # the positive control
            assert await asyncio.wait_for(plain_b.recv(), 5) == b"CONTROL-" + MARKER
            await asyncio.sleep(GRACE)
        finally:
            proc.terminate()  # by its own pid
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            await plain_a.close()
            await plain_b.close()
        data = pcap.read_bytes()
        assert b"CONTROL-" + MARKER in data  # the capture works...
        assert data.count(MARKER) == 1        # ...and the only plaintext marker is the control's
    run(scenario)
