"""A reproducible security world for the tests: a cluster CA, its token, a sponsor, nodes.

All entropy comes from one seeded ``random.Random`` and all times from ``NOW``, so
every certificate and token is the same on every run.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from p2pswarm.security.join import Joiner, Sponsor
from p2pswarm.security.keys import CurveKeys
from p2pswarm.security.pki import CertAuthority, RevocationList, TrustBundle
from p2pswarm.security.tokens import TokenState

NOW = 1_750_000_000.0
"""Wall-clock seconds (2025-06-15) every test starts at."""


@dataclass
class Node:
    node_id: str
    name: str
    keys: CurveKeys
    cert: bytes


class World:
    def __init__(self, seed: int = 1, cluster_id: str = "c0ffee0123456789", now: float = NOW) -> None:
        self.rng = random.Random(seed)
        self.now = now
        self.cluster_id = cluster_id
        self.ca = CertAuthority.create(cluster_id, now, self.entropy(32), self.entropy(16))
        self.bundle = TrustBundle(cluster_id, [self.ca.cert_der])
        self.tokens = TokenState.create(self.entropy(20), now)
        self.revocations = RevocationList(cluster_id)
        self.cluster_key = self.entropy(32)
        self.sponsor_node = self.node("5p0450r000000001", "sponsor")
        self.known: dict[str, bytes] = {self.sponsor_node.node_id: self.sponsor_node.keys.public}
        self.sponsor = Sponsor(self.sponsor_node.node_id, self.sponsor_node.cert, bundle=self.bundle,
                               tokens=self.tokens, revocations=self.revocations, ca=self.ca,
                               cluster_key=self.cluster_key, known_key=self.known.get)

    def entropy(self, n: int) -> bytes:
        return self.rng.randbytes(n)

    def keys(self) -> CurveKeys:
        return CurveKeys.from_secret(self.entropy(32))

    def node(self, node_id: str, name: str, *, now: float | None = None, lifetime: float | None = None,
             ca: CertAuthority | None = None) -> Node:
        keys = self.keys()
        kw = {} if lifetime is None else {"lifetime": lifetime}
        cert = (ca or self.ca).issue(node_id, name, keys.public, self.now if now is None else now,
                                     self.entropy(16), **kw)
        return Node(node_id, name, keys, cert)

    @property
    def token(self):
        return self.tokens.token(self.ca.digest)

    def joiner(self, node_id: str = "j01ne40000000001", name: str = "joiner", token=None,
               keys: CurveKeys | None = None, **kw) -> Joiner:
        return Joiner(token or self.token, node_id, name, keys or self.keys(), **kw)

    def rotate_token(self, now: float | None = None, lifetime: float | None = None) -> None:
        self.tokens = self.tokens.rotate(self.entropy(20), self.now if now is None else now, lifetime)
        self.sponsor.tokens = self.tokens

    def revoke(self, **kw) -> None:
        self.revocations = self.revocations.revoke(**kw)
        self.sponsor.revocations = self.revocations
