"""The access record: remote clients' certificates, their revocations and the audit log (pure, replicated).

A third machine behind the one Raft log (:mod:`p2pswarm.node.statemachine` routes
``{"sm": "access", "cmd": {...}}`` here), applied alike on every replica:

* ``clients``  every issued client certificate by serial (hex): name, role, issue time, expiry, issuer.
  Kept so that ``p2pswarm cluster client-certs`` can list them and a revocation by name finds every
  serial of that name.
* ``revoked``  serials (hex) that every node refuses from then on.  It only grows; an expired
  certificate is refused by TLS anyway, so :data:`MAX_REVOKED` bounds it.
* ``audit``    the last :data:`AUDIT_KEEP` mutating API calls (who, what, when, where, outcome).
* ``api_ca``, ``sealed_api_key``, ``api_generation``  the API CA (:mod:`p2pswarm.security.apica`): its
  certificate, its key sealed under the cluster key, and a generation bumped by each ``api_ca`` command
  (creation, one re-seal per cluster-key rotation, ``cluster api-ca --rotate``), so that two concurrent
  proposals cannot both win.  A *new* API CA certificate empties ``clients``: the old CA's certificates no
  longer pass the TLS handshake, and every bundle must be issued again.

**Why the audit log is replicated, bounded, rather than a node-local file.**  A remote CLI
talks to whichever node its context names, and any node answers any command: a local file
would scatter one operator's changes over every node, and ``p2pswarm audit`` on one node would
miss the rest (and the entries of a node that died or was removed).  Through Raft every node
shows the same ordered history, which survives any minority of nodes.  The price is one extra
Raft entry per mutating call, which is negligible next to the call itself (each is a Raft write
already); bounding it to the last :data:`AUDIT_KEEP` entries keeps snapshots small.  An entry
that cannot be committed (no quorum) is written to the node's log instead.

Applying never raises and never reads a clock: commands are checked for shape only (they
come from authenticated members through Raft).
"""

from __future__ import annotations

from collections import deque
from typing import Any

from p2pswarm.cluster.checks import cut_text, is_bytes, is_number
from p2pswarm.security.pki import MAX_CERT_BYTES

ROLES = ("read-only", "operator", "admin")
"""The client roles, least power first: each role may do what the ones before it may."""
AUDIT_KEEP = 1000
"""Audit entries kept: ~200 bytes each, so ~200 KB in every snapshot; days of operator activity."""
MAX_CLIENTS = 10_000
"""Issued client certificates remembered (listing and revocation by name)."""
MAX_REVOKED = 100_000
"""Revoked serials kept (the same bound as the node revocation list, :data:`p2pswarm.security.pki.MAX_REVOKED`)."""
MAX_TEXT = 256
"""Longest text field of an entry (names, paths, reasons): a longer one is cut, never refused."""
MAX_SEALED_KEY = 256
"""A sealed API CA key is 4 + 12 + 32 + 16 = 64 bytes (seal magic, nonce, key, tag)."""
OPS = ("client", "revoke", "audit", "api_ca")


def _serial(value: Any) -> bool:
    return type(value) is str and 0 < len(value) <= 40 and all(c in "0123456789abcdef" for c in value)


class AccessRecord:
    __slots__ = ("clients", "revoked", "audit", "audit_total", "api_ca", "sealed_api_key", "api_generation",
                 "version")

    def __init__(self) -> None:
        self.clients: dict[str, dict[str, Any]] = {}
        self.revoked: set[str] = set()
        self.audit: deque[dict[str, Any]] = deque(maxlen=AUDIT_KEEP)
        self.audit_total = 0
        """Entries ever appended (the sequence number of the newest one)."""
        self.api_ca = b""
        self.sealed_api_key = b""
        self.api_generation = 0
        self.version = 0

    def apply(self, cmd: dict) -> tuple[bool, str]:
        """Apply one command; (ok, one-line reason when refused).  Same result on every replica."""
        op = cmd.get("op")
        if op not in OPS:
            return False, f"unknown access command {str(op)[:20]!r}"
        if op == "client":
            serial, name, role = cmd.get("serial"), cut_text(cmd.get("name"), 64), cmd.get("role")
            if not _serial(serial) or not name or role not in ROLES or not is_number(cmd.get("not_after")) \
                    or not is_number(cmd.get("issued_at")):
                return False, "bad client certificate command"
            if serial not in self.clients and len(self.clients) >= MAX_CLIENTS:
                return False, f"the cluster remembers at most {MAX_CLIENTS} client certificates; revoke unused ones"
            self.clients[serial] = {"serial": serial, "name": name, "role": role, "issued_at": cmd["issued_at"],
                                    "not_after": cmd["not_after"], "by": cut_text(cmd.get("by"), MAX_TEXT) or "-"}
        elif op == "revoke":
            serials = cmd.get("serials")
            if not isinstance(serials, list) or not serials or not all(_serial(s) for s in serials):
                return False, "bad revocation command"
            new = set(serials) - self.revoked
            if len(self.revoked) + len(new) > MAX_REVOKED:
                return False, f"the cluster keeps at most {MAX_REVOKED} revoked client certificates"
            self.revoked |= new
        elif op == "api_ca":
            cert, sealed, generation = cmd.get("cert"), cmd.get("sealed"), cmd.get("generation")
            if (not is_bytes(cert, MAX_CERT_BYTES) or not is_bytes(sealed, MAX_SEALED_KEY)
                    or type(generation) is not int):
                return False, "bad API CA command"
            if generation != self.api_generation + 1:
                return False, f"the API CA changed meanwhile (generation {self.api_generation}); it is used as it is"
            if self.api_ca and cert != self.api_ca:
                self.clients = {}
            self.api_ca, self.sealed_api_key, self.api_generation = cert, sealed, generation
        else:
            entry = cmd.get("entry")
            if not isinstance(entry, dict) or not is_number(entry.get("at")):
                return False, "bad audit command"
            self.audit_total += 1
            self.audit.append({"seq": self.audit_total, "at": entry["at"],
                               **{k: cut_text(entry.get(k), MAX_TEXT) or "-"
                                  for k in ("who", "role", "node", "method", "path")},
                               "status": entry.get("status") if type(entry.get("status")) is int else 0})
        self.version += 1
        return True, ""

    def serials_of(self, name: str) -> list[str]:
        """The serials issued to ``name`` (or ``[name]`` itself when it is a known serial)."""
        if name in self.clients:
            return [name]
        return sorted(s for s, c in self.clients.items() if c["name"] == name)

    # ------------------------------------------------------------ snapshot

    def snapshot(self) -> dict | None:
        if not self.version:
            return None
        return {"clients": dict(self.clients), "revoked": sorted(self.revoked), "audit": list(self.audit),
                "audit_total": self.audit_total, "api_ca": self.api_ca, "sealed_api_key": self.sealed_api_key,
                "api_generation": self.api_generation, "version": self.version}

    def checking_part(self) -> dict | None:
        """What a node outside the Raft group needs to check remote clients and serve ``--api-addr``
        (:mod:`p2pswarm.assignments.trust`): the API CA and its sealed key, and the client certificates
        issued, each revoked one kept only while it is still listed (so the refusal names the revocation);
        no audit log.  Restores with :meth:`restore`; None before the record has anything."""
        if not self.version:
            return None
        return {"clients": dict(self.clients), "revoked": sorted(self.revoked & self.clients.keys()),
                "api_ca": self.api_ca, "sealed_api_key": self.sealed_api_key,
                "api_generation": self.api_generation, "version": self.version}

    def restore(self, data: Any) -> None:
        """Replace the state in place (a snapshot, or None for an empty record)."""
        self.__init__()  # type: ignore[misc]
        if not isinstance(data, dict):
            return
        clients, revoked, audit = data.get("clients"), data.get("revoked"), data.get("audit")
        if isinstance(clients, dict):
            self.clients = {k: v for k, v in clients.items() if _serial(k) and isinstance(v, dict)}
        if isinstance(revoked, list):
            self.revoked = {s for s in revoked if _serial(s)}
        if isinstance(audit, list):
            self.audit.extend(e for e in audit if isinstance(e, dict))
        self.audit_total = data["audit_total"] if type(data.get("audit_total")) is int else len(self.audit)
        cert, sealed, generation = data.get("api_ca"), data.get("sealed_api_key"), data.get("api_generation")
        if is_bytes(cert, MAX_CERT_BYTES) and is_bytes(sealed, MAX_SEALED_KEY) and type(generation) is int:
            self.api_ca, self.sealed_api_key, self.api_generation = cert, sealed, generation
        self.version = data["version"] if type(data.get("version")) is int else 1


def client_command(cid: str, *, serial: str, name: str, role: str, issued_at: float, not_after: float,
                   by: str) -> dict:
    return {"id": cid, "op": "client", "serial": serial, "name": name, "role": role, "issued_at": issued_at,
            "not_after": not_after, "by": by}


def api_ca_command(cid: str, *, cert: bytes, sealed: bytes, generation: int) -> dict:
    """Create, re-seal or replace the API CA; ``generation`` is the record's current one + 1."""
    return {"id": cid, "op": "api_ca", "cert": cert, "sealed": sealed, "generation": generation}


def revoke_command(cid: str, serials: list[str]) -> dict:
    return {"id": cid, "op": "revoke", "serials": list(serials)}


def audit_command(cid: str, *, at: float, who: str, role: str, node: str, method: str, path: str,
                  status: int) -> dict:
    return {"id": cid, "op": "audit", "entry": {"at": at, "who": who, "role": role, "node": node, "method": method,
                                                "path": path, "status": status}}
