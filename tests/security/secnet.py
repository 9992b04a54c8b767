"""Real CURVE transports and join endpoints on loopback for the security tests (no node.py needed).

A :class:`Member` is what the node will be once wired: a CURVE ZmqTransport whose
``authorize``/``peer_key`` come from an :class:`Admission`, and a join endpoint
served by a :class:`Sponsor`.  Everything is closed by the test's ``run``.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from p2pswarm.security.admission import Admission
from p2pswarm.security.join import Joiner, JoinResult
from p2pswarm.security.joinchannel import JoinServer, exchange, sponsor_handler
from p2pswarm.security.keys import CurveKeys
from p2pswarm.transport.zmq import ZmqTransport

from .secworld import World

DEADLINE = 5.0
GRACE = 0.3


class Member:
    def __init__(self, node_id: str, keys: CurveKeys, cert: bytes, admission: Admission) -> None:
        self.node_id, self.keys, self.cert, self.admission = node_id, keys, cert, admission
        self.transport = ZmqTransport("127.0.0.1:0", curve=keys, authorize=admission.authorize,
                                      peer_key=admission.peer_key)
        self.join_server: JoinServer | None = None
        self.inbox: list[bytes] = []
        self.rejected: Counter[str] = Counter()
        self._task: asyncio.Task | None = None

    async def start(self, sponsor=None) -> None:
        await self.transport.start()
        if sponsor is not None:
            self.join_server = JoinServer("127.0.0.1:0", sponsor_handler(sponsor, clock=time.time))
            await self.join_server.start()
        self._task = asyncio.ensure_future(self._receive())

    async def _receive(self) -> None:
        while True:
            data, key = await self.transport.recv_with_key()
            if self.admission.identity(key) is None:  # belt and braces: the transport already checked
                self.rejected["unknown_key"] += 1
                continue
            self.inbox.append(data)

    @property
    def addr(self) -> str:
        return self.transport.local_addr

    def knows(self, other: "Member") -> None:
        self.admission.admit(other.cert, time.time(), addr=other.addr)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.transport.close()
        if self.join_server is not None:
            await self.join_server.close()


async def until(cond, what: str, deadline: float = DEADLINE):
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while True:
        value = cond()
        if value:
            return value
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def run(scenario) -> None:
    """Run ``scenario(world, sponsor member, made)`` within 20 s; everything in ``made`` is closed after."""
    async def main() -> None:
        w = World(now=time.time())
        sponsor = sponsor_member(w)
        made: list = [sponsor]
        try:
            await sponsor.start(w.sponsor)
            await asyncio.wait_for(scenario(w, sponsor, made), 20)
        finally:
            for m in made:
                await m.close()
    asyncio.run(main())


def sponsor_member(w: World) -> Member:
    n = w.sponsor_node
    m = Member(n.node_id, n.keys, n.cert, Admission(w.bundle, w.revocations))
    m.admission.admit(n.cert, time.time(), addr="self")
    return m


async def join(w: World, sponsor: Member, joiner: Joiner) -> tuple[Member, JoinResult]:
    """The whole join: handshake on the join endpoint, then a CURVE transport with the new certificate."""
    assert sponsor.join_server is not None
    reply = await exchange(sponsor.join_server.addr, joiner.keys, joiner.request(time.time(), w.entropy(16)))
    result = joiner.handle(reply, time.time())
    member = Member(joiner.node_id, joiner.keys, result.cert, Admission(result.bundle))
    await member.start()
    member.admission.admit(result.sponsor_cert, time.time(), addr=sponsor.addr)
    sponsor.knows(member)
    return member, result
