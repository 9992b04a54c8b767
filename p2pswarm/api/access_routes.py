"""``/v1/security/client-certs``, ``/v1/security/api-ca`` and ``/v1/audit``: remote clients' certificates, the
API CA that signs them and the audit log.

Issuing signs the public key the CLI sent (the private key never leaves the CLI's machine)
with the API CA (:mod:`p2pswarm.security.apica`; created at the first issue if the cluster has none
yet), then records the certificate in the access record
(:mod:`p2pswarm.security.access`) through Raft; revoking adds its serials there, so every
node refuses the bundle once it applied the entry.
"""

from __future__ import annotations

import secrets
import time
import urllib.parse

from p2pswarm.api import paths
from p2pswarm.api.common import json_body, raft_call, require_driver, require_security
from p2pswarm.api.server import HttpError, Request, Response
from p2pswarm.consensus.requests import command_id
from p2pswarm.node.view import NodeView
from p2pswarm.security import access
from p2pswarm.security.clientcerts import CLIENT_CERT_LIFETIME, client_identity, issue_client
from p2pswarm.security.pki import CA_LIFETIME, to_pem

CLIENT_CERTS = "/v1/security/client-certs"
API_CA = "/v1/security/api-ca"
AUDIT = "/v1/audit"
DEFAULT_AUDIT_LIMIT = 50


class AccessRoutes(paths.PatternRoutes):
    def __init__(self, node: NodeView) -> None:
        self.node = node
        self.table = {
            f"GET {CLIENT_CERTS}": self.ls, f"POST {CLIENT_CERTS}": self.issue,
            f"DELETE {CLIENT_CERTS}/{{name}}": self.revoke, f"GET {AUDIT}": self.audit,
            f"GET {API_CA}": self.api_ca, f"POST {API_CA}": self.rotate_api_ca,
        }

    def _record(self) -> access.AccessRecord:
        return require_driver(self.node).sm.access

    async def _write(self, command: dict) -> None:
        result = await raft_call(require_driver(self.node).write_access(command))
        if not result.ok:
            raise HttpError(400, result.error)

    def ls(self, request: Request) -> Response:
        record = self._record()
        rows = [{**c, "revoked": s in record.revoked} for s, c in record.clients.items()]
        return Response.json({"client_certs": sorted(rows, key=lambda c: (c["name"], c["issued_at"]))})

    async def issue(self, request: Request) -> Response:
        body = json_body(request)
        body = body if isinstance(body, dict) else {}
        ttl = body.get("ttl", CLIENT_CERT_LIFETIME)
        if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not 1 <= ttl <= CA_LIFETIME:
            raise HttpError(400, "ttl must be a number of seconds from 1 to 10 years")
        try:
            public = bytes.fromhex(body.get("public_key") or "")
        except (TypeError, ValueError):
            public = b""
        require_security(self.node)  # a plaintext cluster has no CA: one line saying so
        from p2pswarm.security.apicahost import ApiCAUnavailable
        try:
            ca = await raft_call(self.node.api_ca.ensure(require_driver(self.node)))
        except ApiCAUnavailable as exc:
            raise HttpError(503, str(exc)) from None
        now = time.time()
        try:
            der = issue_client(ca, body.get("name"), body.get("role"), public, now, secrets.token_bytes(16),
                               lifetime=ttl)
        except ValueError as exc:
            raise HttpError(400, str(exc)) from None
        ident = client_identity(der)
        assert ident is not None  # we just made it
        await self._write(access.client_command(command_id("access"), serial=ident.serial,
                                                name=ident.name, role=ident.role, issued_at=now,
                                                not_after=ident.not_after, by=request.caller))
        return Response.json({"cert": to_pem(der), "ca": to_pem(ca.cert_der), "cluster_id": ident.cluster_id,
                              "name": ident.name, "role": ident.role, "serial": ident.serial,
                              "not_after": ident.not_after})

    async def revoke(self, request: Request, name: str) -> Response:
        serials = self._record().serials_of(name)
        if not serials:
            raise HttpError(404, f"no client certificate is named {name} (see `p2pswarm cluster client-certs`)")
        await self._write(access.revoke_command(command_id("access"), serials))
        return Response.json({"revoked": serials, "name": name})

    def api_ca(self, request: Request) -> Response:
        require_security(self.node)
        return Response.json(self.node.api_ca.view(require_driver(self.node)))

    async def rotate_api_ca(self, request: Request) -> Response:
        from p2pswarm.security.apicahost import ApiCAUnavailable
        body = json_body(request)
        if not isinstance(body, dict) or body.get("rotate") is not True:
            raise HttpError(400, 'body must be {"rotate": true}')
        require_security(self.node)
        try:
            return Response.json(await raft_call(self.node.api_ca.rotate(require_driver(self.node))))
        except ApiCAUnavailable as exc:
            raise HttpError(503, str(exc)) from None

    def audit(self, request: Request) -> Response:
        values = urllib.parse.parse_qs(request.query).get("limit", [str(DEFAULT_AUDIT_LIMIT)])
        if not values[-1].isdigit() or not 1 <= int(values[-1]) <= access.AUDIT_KEEP:
            raise HttpError(400, f"limit must be a number from 1 to {access.AUDIT_KEEP}")
        record = self._record()
        entries = list(record.audit)[-int(values[-1]):]
        return Response.json({"entries": entries, "total": record.audit_total})
