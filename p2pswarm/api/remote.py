"""The remote API listener (``up --api-addr HOST:PORT``): the same API over TLS 1.3 with client certificates.

Per connection, in order, each refusal one line and one counter (``p2pswarm_node_remote_api_<counter>_total``
in /metrics), never more than one request:

1. more than :data:`MAX_CONNECTIONS` open: closed at once (``refused_busy``);
2. the first byte is peeked (``MSG_PEEK``) within :data:`HANDSHAKE_TIMEOUT`: a TLS record starts with
   ``0x16``; anything else is a plaintext client, answered with a plaintext 400 line (``refused_plaintext``);
   silence is closed (``handshake_timeout``);
3. the TLS 1.3 handshake with a required client certificate, verified by OpenSSL against the API CA
   (:mod:`p2pswarm.security.apica`): wrong, expired or another cluster's certificates fail here
   (``refused_handshake``);
4. the verified certificate must be a p2pswarm *client* certificate of this cluster (a node's mesh
   leaf is not, ``refused_not_client``) whose serial is not revoked in the access record
   (``refused_revoked``) and that the access record lists as issued, with the same name and role, not
   expired (``refused_unrecorded``; ``refused_no_record`` before this node has the record: a worker
   outside the Raft group checks by the access part its member sends, :mod:`p2pswarm.assignments.trust`):
   a 403 line.
   The last check is what stops a certificate minted with a copy of the API CA key (a removed node's
   data dir holds one): only certificates issued through ``cluster client-cert`` are recorded;
5. the request, bounded like the unix socket's (headers, body, :data:`~p2pswarm.api.server.READ_TIMEOUT`;
   ``refused_bad_request``), then the role check (:mod:`p2pswarm.api.roles`; ``refused_role``, a 403
   naming the role needed), then the router through :class:`~p2pswarm.api.audit.Audited`.

The server certificate is issued by this node to itself from the API CA (CN = node id,
O = ``p2pswarm api <cluster>``; :class:`~p2pswarm.security.apicahost.ApiCAHost`), read at each
connection (the context is rebuilt when it changed), so a renewal takes effect without a restart, and
``node rm`` or a cluster CA rotation does not touch it.  The CLI checks that O names its bundle's
cluster instead of a host name: nodes are named by certificates, not by DNS.  A request not read
within the timeout gets a 408 (``read_timeout``); a connection lost midway
is counted (``dropped``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections import Counter
from typing import Any, Callable, Protocol

from p2pswarm.api import roles
from p2pswarm.api.server import (
    MAX_BODY_BYTES,
    MAX_HEADER_BYTES,
    READ_TIMEOUT,
    ApiServer,
    HttpError,
    Reply,
    Request,
    Response,
    read_request,
    render,
)
from p2pswarm.mesh.tlsctx import load_pem_chain
from p2pswarm.security.access import AccessRecord
from p2pswarm.security.clientcerts import ClientIdentity, client_identity

log = logging.getLogger("p2pswarm.api.remote")

HANDSHAKE_TIMEOUT = 10.0
"""Seconds from accept to a finished TLS handshake: a laptop on a slow link needs ~3 round trips (well
under a second); a client that says nothing for this long holds a slot for nothing."""
MAX_CONNECTIONS = 64
"""Open remote connections at once: a few operators' CLIs (one connection per call) with room for
`top` refreshing; more is a flood, refused before any TLS work."""
DRAIN_LIMIT = 4 * MAX_BODY_BYTES
"""Bytes of an oversized body read and dropped before answering 413: a CLI's mistake of a few MiB gets its one
line; beyond that the connection is reset (a flood costs at most this much reading per connection)."""
DRAIN_IDLE = 1.0
"""Seconds without data after which draining an oversized body stops (the client sent all it had)."""
TLS_RECORD_HANDSHAKE = 0x16
"""The first byte of a TLS ClientHello record (content type 22, RFC 8446 §5.1)."""
PLAINTEXT_REPLY = ("this port speaks TLS 1.3 with client certificates: use https:// with a client bundle "
                   "(see `p2pswarm context create`)")


def parse_api_addr(text: str) -> tuple[str, int]:
    """``(host, port)`` from ``HOST:PORT``; ValueError (one line) otherwise."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--api-addr must be HOST:PORT with a port from 1 to 65535, got {text!r}")
    return host, int(port)


class AuditedHandler(Protocol):
    """The router as this listener uses it (:class:`p2pswarm.api.audit.Audited`): it also names a request's
    endpoint (for the role check) and records the refusals."""

    def __call__(self, request: Request) -> Reply: ...

    def endpoint(self, request: Request) -> str | None: ...

    def record(self, request: Request, endpoint: str | None, status: int) -> None: ...


class RemoteApiServer(ApiServer):
    """The TLS listener; ``tls`` gives ``cluster_id`` and the server ``material``
    (:class:`~p2pswarm.security.apicahost.ApiCAHost`), ``record`` the access record (None before Raft runs)."""

    handler: AuditedHandler

    def __init__(self, addr: tuple[str, int], handler: AuditedHandler, tls: Any,
                 record: Callable[[], AccessRecord | None]) -> None:
        super().__init__(f"{addr[0]}:{addr[1]}", handler)
        self.addr, self.tls, self.record = addr, tls, record
        self.counters: Counter[str] = Counter()
        self._listener: socket.socket | None = None
        self._accepting: asyncio.Task | None = None
        self._open: set[asyncio.Task] = set()
        self._ctx: ssl.SSLContext | None = None
        self._ctx_source: Any = None

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        host, port = self.addr
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(MAX_CONNECTIONS)
        except OSError as exc:
            sock.close()
            raise ValueError(f"--api-addr {host}:{port}: cannot listen: {exc.strerror or exc}") from None
        sock.setblocking(False)
        self._listener = sock
        self.addr = sock.getsockname()[:2]
        self._accepting = asyncio.ensure_future(self._accept_loop())
        log.info("remote API on %s:%d (TLS 1.3, client certificates)", *self.addr)

    async def close(self) -> None:
        if self._accepting is not None:
            self._accepting.cancel()
            await asyncio.gather(self._accepting, return_exceptions=True)
            self._accepting = None
        for task in list(self._open):
            task.cancel()
        await asyncio.gather(*self._open, return_exceptions=True)
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def stats(self) -> dict[str, int]:
        return dict(self.counters)

    # ------------------------------------------------------------ connections

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._listener is not None
        while True:
            try:
                conn, _ = await loop.sock_accept(self._listener)
            except OSError as exc:  # e.g. EMFILE: back off instead of spinning
                log.warning("remote API accept failed: %s", exc)
                await asyncio.sleep(0.1)
                continue
            if len(self._open) >= MAX_CONNECTIONS:
                self.counters["refused_busy"] += 1
                conn.close()
                continue
            conn.setblocking(False)
            task = asyncio.ensure_future(self._connection(conn))
            self._open.add(task)
            task.add_done_callback(self._open.discard)

    async def _connection(self, conn: socket.socket) -> None:
        self.counters["connections"] += 1
        writer = None
        try:
            first = await asyncio.wait_for(_peek(conn), HANDSHAKE_TIMEOUT)
            if not first:
                conn.close()
                return
            if first[0] != TLS_RECORD_HANDSHAKE:
                self.counters["refused_plaintext"] += 1
                with contextlib.suppress(BlockingIOError):  # closing on unread data would reset the reply
                    conn.recv(MAX_HEADER_BYTES)
                await _send_plain(conn, render(Response.error(400, PLAINTEXT_REPLY)))
                return
            reader, writer, ident, refusal = await self._handshake(conn)
            if writer is None:
                return
            try:
                response = await self._answer(reader, ident, refusal)
            except Exception:  # a bug here must not reach the client as a bare close (read as a refused cert)
                log.exception("remote API: answering a request failed")
                self.counters["internal_errors"] += 1
                response = Response.error(500, "internal error on this node while answering; see the node's log")
            writer.write(render(response))
            await writer.drain()
            for action in response.after:
                action()
        except asyncio.TimeoutError:
            self.counters["handshake_timeout"] += 1
        except (ConnectionError, ssl.SSLError, OSError, asyncio.IncompleteReadError):
            self.counters["dropped"] += 1
        finally:
            if writer is not None:
                writer.close()
            else:
                conn.close()

    async def _handshake(self, conn: socket.socket) -> tuple[Any, Any, ClientIdentity | None, str | None]:
        """(reader, writer, identity, refusal line or None); all None when the handshake failed."""
        loop = asyncio.get_running_loop()
        ctx = self._context()
        if ctx is None:
            self.counters["refused_no_tls_material"] += 1
            await _send_plain(conn, render(Response.error(503, "this node does not hold its API certificate yet; "
                                                               "retry in a moment")))
            return None, None, None, None
        reader = asyncio.StreamReader(limit=MAX_HEADER_BYTES)
        protocol = asyncio.StreamReaderProtocol(reader)
        try:
            transport, _ = await loop.connect_accepted_socket(lambda: protocol, conn, ssl=ctx,
                                                              ssl_handshake_timeout=HANDSHAKE_TIMEOUT)
        except ssl.SSLError as exc:
            self.counters["refused_handshake"] += 1
            log.debug("remote API: TLS handshake refused: %s", exc.reason or exc)
            return None, None, None, None
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        ssl_object = transport.get_extra_info("ssl_object")
        ident = client_identity(ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None)
        return reader, writer, ident, self._refusal(ident)

    def _refusal(self, ident: ClientIdentity | None) -> str | None:
        """Why a verified certificate may not call the API (one line, counted), or None."""
        record = self.record()
        if ident is None or ident.cluster_id != self.tls.cluster_id:
            self.counters["refused_not_client"] += 1
            return ("the certificate presented is not a client certificate of this cluster; use a bundle from "
                    "`p2pswarm cluster client-cert`")
        if record is None:
            self.counters["refused_no_record"] += 1
            return "this node has not loaded the cluster's access record yet; retry in a moment"
        if ident.serial in record.revoked:
            self.counters["refused_revoked"] += 1
            return (f"the client certificate {ident.name} (serial {ident.serial}) is revoked; ask an admin for a "
                    f"new bundle")
        issued = record.clients.get(ident.serial) or {}
        not_after = issued.get("not_after")
        if issued.get("name") != ident.name or issued.get("role") != ident.role \
                or not isinstance(not_after, (int, float)) or not_after < time.time():
            self.counters["refused_unrecorded"] += 1
            log.warning("remote API: refused client certificate %s (serial %s, %s): not issued by this cluster",
                        ident.name, ident.serial, ident.role)
            return (f"the client certificate {ident.name} (serial {ident.serial}) is not one this cluster issued "
                    f"(`p2pswarm cluster client-certs` lists them); if it was issued a moment ago retry, otherwise "
                    f"ask an admin for a new bundle")
        return None

    async def _answer(self, reader: Any, ident: ClientIdentity | None, refusal: str | None) -> Response:
        """The response to the one request of a connection (read first even when refused: closing on unread
        data would reset the connection before the client reads why)."""
        try:
            request = await asyncio.wait_for(read_request(reader), READ_TIMEOUT)
        except asyncio.TimeoutError:
            self.counters["read_timeout"] += 1
            return Response.error(408, f"the request did not arrive within {READ_TIMEOUT:g} s")
        except HttpError as exc:
            self.counters["refused_bad_request"] += 1
            if exc.status == 413:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(_drain(reader), READ_TIMEOUT)
            return Response.error(exc.status, str(exc))
        if refusal is not None or ident is None:
            return Response.error(403, refusal or "no client certificate")
        request.caller, request.role = f"{ident.name} ({ident.serial})", ident.role
        endpoint = self.handler.endpoint(request)
        if endpoint is not None and not roles.allows(ident.role, roles.required(endpoint)):
            self.counters["refused_role"] += 1
            self.handler.record(request, endpoint, 403)
            return Response.error(403, roles.refusal(endpoint, ident.role, request.method, request.path))
        self.counters["requests"] += 1
        try:
            return await self._dispatch(request)
        except HttpError as exc:
            return Response.error(exc.status, str(exc))

    def _context(self) -> ssl.SSLContext | None:
        """The server context for this node's current API server certificate (rebuilt only when it changes)."""
        material = self.tls.material
        if material is None:
            return None
        if material != self._ctx_source:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_3
            ctx.verify_mode = ssl.CERT_REQUIRED
            load_pem_chain(ctx, material.cert_pem, material.key_pem)
            ctx.load_verify_locations(cadata=material.anchors_pem)
            self._ctx, self._ctx_source = ctx, material
        return self._ctx


async def _peek(conn: socket.socket) -> bytes:
    """The first byte the client sent, left in the socket for the TLS layer (b"" when it closed)."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)
    loop.add_reader(conn.fileno(), wake)
    try:
        await ready
    finally:
        loop.remove_reader(conn.fileno())
    return conn.recv(1, socket.MSG_PEEK)


async def _drain(reader: asyncio.StreamReader) -> None:
    """Read and drop what an oversized request still sends (up to :data:`DRAIN_LIMIT`, within
    :data:`~p2pswarm.api.server.READ_TIMEOUT`), so that the client, still writing, gets to read the 413
    instead of a reset connection."""
    total = 0
    while total < DRAIN_LIMIT:
        try:
            chunk = await asyncio.wait_for(reader.read(65536), DRAIN_IDLE)
        except (asyncio.TimeoutError, ConnectionError, ssl.SSLError):
            return
        if not chunk:
            return
        total += len(chunk)


async def _send_plain(conn: socket.socket, data: bytes) -> None:
    loop = asyncio.get_running_loop()
    try:
        await asyncio.wait_for(loop.sock_sendall(conn, data), HANDSHAKE_TIMEOUT)
    except (OSError, asyncio.TimeoutError):
        pass
