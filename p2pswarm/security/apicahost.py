"""This node's side of the API CA (:mod:`p2pswarm.security.apica`): create it once, open it, re-seal it.

Stepped with the security host (:meth:`ApiCAHost.step`), it keeps in step with the access record:

* **create**: a node that needs the API CA (it serves ``--api-addr``, or it is asked for a client
  certificate: :meth:`ensure`) and finds none proposes one (``api_ca`` generation 1); the access
  record's compare-and-set lets exactly one proposal win, and every node then uses that one;
* **open**: every member unseals it with its cluster key and keeps the key in memory.  After a
  ``node rm`` the cluster key changes and the sealed copy no longer opens with the new key: the
  key already in memory stays usable;
* **re-seal**: the Raft leader, holding the key in memory while the sealed copy does not open with
  the current cluster key, proposes the same CA sealed under the current key (generation + 1), so
  that members joining later can open it and the old key (which a removed node holds) cannot;
* **serve**: on a node serving ``--api-addr``, a server certificate issued to itself
  (:func:`~p2pswarm.security.apica.issue_server`), kept in memory and renewed before it expires;
* **rotate** (``cluster api-ca --rotate``, :meth:`rotate`): a new API CA replaces the old one at
  once, so that a copy of the old key (a removed node's data dir) is worth nothing; every client
  bundle must then be issued again.

"Current cluster key" is tested by opening the security record's join-token state, which every
rekey and token rotation seals under the newest key: a node whose key is stale (it has not opened
its share yet) never creates or re-seals.
"""

from __future__ import annotations

import logging
import secrets
import time
from typing import Any, Callable

from cryptography import x509

from p2pswarm.consensus.requests import command_id
from p2pswarm.security import access
from p2pswarm.security.apica import ApiCA, issue_server, server_due
from p2pswarm.security.errors import KeyFileError
from p2pswarm.security.meshtls import Material
from p2pswarm.security.pki import NONCE_BYTES, _validity, fingerprint, to_pem, unseal
from p2pswarm.security.proposals import PROPOSE_TIMEOUT, Proposals
from p2pswarm.security.record import TOKEN_CONTEXT

log = logging.getLogger("p2pswarm.security.apica")

STEP_INTERVAL = 0.5
"""Seconds between looks at the access record (the security host's own scan interval)."""
"""Seconds a create or re-seal proposal may take to commit (an election fits); it is retried after."""


class ApiCAUnavailable(Exception):
    """The API CA cannot be used on this node yet (one line)."""


class ApiCAHost:
    def __init__(self, security: Any, *, serve: bool, wall: Callable[[], float] = time.time,
                 entropy: Callable[[int], bytes] = secrets.token_bytes) -> None:
        self.security, self.serve, self.wall, self.entropy = security, serve, wall, entropy
        self.ca: ApiCA | None = None
        """The API CA with its key, once unsealed here (kept across cluster-key rotations)."""
        self.sealed_current = False
        """True when the record's sealed copy opens with this node's current cluster key."""
        self.material: Material | None = None
        """This node's server certificate, key and the API CA as TLS anchor (when serving)."""
        self._server: tuple[bytes, float, float] | None = None
        """(API CA digest, not_before, not_after) of the server certificate in :attr:`material`."""
        self._wanted = serve
        self._seen: tuple = ()
        self._key_check: tuple[bytes, bytes, bool] = (b"", b"", False)
        self._next_step = 0.0
        self.proposals = Proposals("API CA", lambda driver, cmd, timeout: driver.write_access(cmd, timeout=timeout))
        self._warned: set[str] = set()

    @property
    def cluster_id(self) -> str | None:
        return self.security.cluster_id

    # ------------------------------------------------------------ periodic work

    def step(self, driver: Any, now: float) -> None:
        if driver is None or now < self._next_step:
            return
        self._next_step = now + STEP_INTERVAL
        rec = driver.sm.access
        self._open(rec)
        key_current = self._key_current(driver)
        if self.proposals.inflight or not key_current:
            pass  # one proposal at a time, and only under the cluster key every member holds
        elif not rec.api_ca and self._wanted:
            self.proposals.propose(driver, "create", self._create_command(rec))
        elif (rec.api_ca and self.ca is not None and self.ca.cert_der == rec.api_ca and not self.sealed_current
              and driver.raft.role == "leader"):
            log.warning("re-sealing the API CA key under the current cluster key (it was rotated)")
            self.proposals.propose(driver, "reseal", access.api_ca_command(
                command_id("access", "apica"), cert=self.ca.cert_der, generation=rec.api_generation + 1,
                sealed=self.ca.seal(self.security.cluster_key, self.entropy(NONCE_BYTES))))
        if self.serve:
            self._refresh_server(self.wall())

    def step_worker(self, rec: access.AccessRecord | None, now: float) -> None:
        """A worker outside the Raft group: open the API CA from the access part its member sends and serve
        with it; never propose (it holds no replica to compare-and-set against)."""
        if now < self._next_step:
            return
        self._next_step = now + STEP_INTERVAL
        if rec is not None:
            self._open(rec)
        if self.serve:
            self._refresh_server(self.wall())

    def _open(self, rec: access.AccessRecord) -> None:
        """Unseal the record's API CA when it or our cluster key changed (a failure keeps the key in memory)."""
        key = self.security.cluster_key
        state = (rec.api_ca, rec.sealed_api_key, key)
        if state == self._seen or not rec.api_ca or key is None or self.cluster_id is None:
            return
        self._seen = state
        try:
            ca = ApiCA.unseal(rec.api_ca, rec.sealed_api_key, key)
        except KeyFileError as exc:
            self.sealed_current = False
            if self.ca is None or self.ca.cert_der != rec.api_ca:
                self._warn("open", f"cannot unseal the API CA key, this node cannot serve --api-addr or issue client "
                                   f"certificates until the leader re-seals it: {exc}")
            return
        self.sealed_current = True
        if ca.cluster_id != self.cluster_id:
            self._warn("cluster", f"the API CA in the Raft state is for cluster {ca.cluster_id}, not "
                                  f"{self.cluster_id}: ignoring it")
            return
        if self.ca is None or self.ca.cert_der != ca.cert_der:
            self.ca = ca
            self._warned.discard("open")

    def _key_current(self, driver: Any) -> bool:
        """True when this node's cluster key opens the security record's join-token state (sealed under the
        newest key by every rekey): only then may it seal anything for others."""
        key, sealed = self.security.cluster_key, driver.security.tokens
        if key is None or not sealed:
            return False
        if self._key_check[:2] != (key, sealed):
            try:
                unseal(key, sealed, TOKEN_CONTEXT)
                ok = True
            except KeyFileError:
                ok = False
            self._key_check = (key, sealed, ok)
        return self._key_check[2]

    def _create_command(self, rec: access.AccessRecord) -> dict:
        assert self.cluster_id is not None and self.security.cluster_key is not None
        ca = ApiCA.create(self.cluster_id, self.wall(), self.entropy(32), self.entropy(16))
        return access.api_ca_command(command_id("access", "apica"), cert=ca.cert_der,
                                     sealed=ca.seal(self.security.cluster_key, self.entropy(NONCE_BYTES)),
                                     generation=rec.api_generation + 1)

    def _refresh_server(self, now: float) -> None:
        ca = self.ca
        if ca is None:
            return
        server = self._server
        if server is not None and server[0] == ca.digest and not server_due(server[1], server[2], now):
            return
        cert, key = issue_server(ca, self.security.node_id, now, self.entropy(32), self.entropy(16))
        start, end = _validity(x509.load_der_x509_certificate(cert))
        self._server = (ca.digest, start, end)
        self.material = Material(ca.cluster_id, to_pem(cert), key.decode("ascii"), to_pem(ca.cert_der))

    # ------------------------------------------------------------ on demand

    async def ensure(self, driver: Any) -> ApiCA:
        """The API CA, created now if the cluster has none yet; ApiCAUnavailable (one line) otherwise."""
        self._wanted = True
        if self.ca is None and driver is not None:
            rec = driver.sm.access
            if not rec.api_ca and self._key_current(driver):
                await driver.write_access(self._create_command(rec), timeout=PROPOSE_TIMEOUT)  # a lost race is fine
            self._open(rec)
        if self.ca is None:
            raise ApiCAUnavailable("this node does not hold the API CA key yet (it has not opened the cluster key "
                                   "it needs); retry in a moment or ask another node")
        return self.ca

    async def rotate(self, driver: Any) -> dict[str, Any]:
        """Replace the API CA (every client bundle stops working); ApiCAUnavailable or ValueError (one line)."""
        rec = driver.sm.access
        if not self._key_current(driver):
            raise ApiCAUnavailable("this node does not hold the current cluster key yet; retry in a moment or run "
                                   "it on another member")
        result = await driver.write_access(self._create_command(rec), timeout=PROPOSE_TIMEOUT)
        if not result.ok:
            raise ValueError(result.error)
        self._open(rec)
        log.warning("API CA rotated (generation %d): client bundles of the old one are refused", rec.api_generation)
        return self.view(driver)

    def view(self, driver: Any) -> dict[str, Any]:
        """The API CA as people see it: fingerprint, generation, and whether this node holds and serves it."""
        rec = driver.sm.access if driver is not None else None
        return {"fingerprint": fingerprint(rec.api_ca) if rec is not None and rec.api_ca else None,
                "generation": rec.api_generation if rec is not None else None,
                "clients": len(rec.clients) if rec is not None else None,
                "held": self.ca is not None and rec is not None and self.ca.cert_der == rec.api_ca,
                "sealed_current": self.sealed_current, "serving": self.material is not None}

    # ------------------------------------------------------------ plumbing

    def _warn(self, what: str, message: str) -> None:
        if what not in self._warned:
            self._warned.add(what)
            log.error("%s", message)

    async def close(self) -> None:
        await self.proposals.close()
