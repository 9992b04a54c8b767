"""A small HTTP/1.1 server on a unix socket, written on asyncio streams.

Why hand-written: the API is local (a unix socket, mode 0600, so file
permissions are the access control), tiny and JSON-only, and a web framework
would be the node's largest dependency. One request per connection
(``Connection: close``) keeps it simple; the CLI opens one connection per call.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import socket
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, Callable, TypeAlias

log = logging.getLogger("p2pswarm.api")

MAX_HEADER_BYTES = 16 * 1024
MAX_BODY_BYTES = 1024 * 1024
READ_TIMEOUT = 10.0
REASONS = {200: "OK", 202: "Accepted", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
           405: "Method Not Allowed", 408: "Request Timeout", 411: "Length Required", 413: "Payload Too Large",
           500: "Internal Server Error", 503: "Service Unavailable"}


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes = b""
    query: str = ""
    """The raw query string (after ``?``), for handlers that take options."""
    caller: str = "local"
    """Who calls: ``local`` on the unix socket, the client certificate's name and serial on the
    remote listener (:mod:`p2pswarm.api.remote`); for the audit log."""
    role: str = "local"
    """The caller's role (:mod:`p2pswarm.api.roles`): ``local`` (the node's owner) or the certificate's."""


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    after: list = field(default_factory=list)
    """Callables run once the response is written (e.g. begin shutting down)."""

    @classmethod
    def json(cls, obj: Any, status: int = 200) -> "Response":
        return cls(status, (json.dumps(obj, sort_keys=True) + "\n").encode())

    @classmethod
    def error(cls, status: int, message: str) -> "Response":
        return cls.json({"error": message}, status)

    @classmethod
    def text(cls, body: str, content_type: str = "text/plain; version=0.0.4; charset=utf-8") -> "Response":
        return cls(200, body.encode(), content_type)


Reply: TypeAlias = "Response | Awaitable[Response]"
"""What a handler returns: a response, or (for a handler that waits, e.g. for a Raft commit) an awaitable one."""

Handler: TypeAlias = Callable[[Request], Reply]


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ApiServer:
    def __init__(self, path: str, handler: Handler) -> None:
        self.path = path
        self.handler = handler
        self._server: asyncio.AbstractServer | None = None
        self._serving: set[asyncio.Task] = set()
        """The requests being answered: closing the server ends them (Python 3.12's ``wait_closed`` waits for
        every connection, and a client that stops reading a large answer would hold it for good)."""

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._serve, sock=bind_private(self.path),
                                                       limit=MAX_HEADER_BYTES)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._serving):
                task.cancel()
            await asyncio.gather(*self._serving, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._serving.add(task)
        response: Response | None = None
        sent = False
        try:
            response = await self._respond(reader)
            if response is not None:
                sent = await self._send(writer, render(response))
        except asyncio.CancelledError:  # only close() cancels a request: the node is stopping
            if response is None:  # nothing written yet: say why no answer comes (it fits the socket's buffer)
                writer.write(render(Response.error(503, "the node is stopping")))
                sent = True
            response = None
        finally:
            self._serving.discard(task)
            if sent:
                writer.close()
            else:  # a client that stopped reading: close() would keep the connection until it reads
                writer.transport.abort()
        for action in response.after if response is not None else ():
            action()

    async def _respond(self, reader: asyncio.StreamReader) -> Response | None:
        """The response to one request (None: the client went away or sent nothing in time)."""
        try:
            request = await asyncio.wait_for(read_request(reader), READ_TIMEOUT)
            return await self._dispatch(request)
        except HttpError as exc:
            return Response.error(exc.status, str(exc))
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            return None

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, data: bytes) -> bool:
        """Write ``data``; False when the client went away or read none of it for READ_TIMEOUT seconds."""
        writer.write(data)
        try:
            await asyncio.wait_for(writer.drain(), READ_TIMEOUT)
        except (ConnectionError, asyncio.TimeoutError):
            return False
        return True

    async def _dispatch(self, request: Request) -> Response:
        try:
            response = self.handler(request)
            if inspect.isawaitable(response):  # handlers that wait (e.g. for a Raft commit)
                response = await response
            return response
        except HttpError:
            raise
        except Exception as exc:
            log.error("API %s %s failed", request.method, request.path, exc_info=True)
            return Response.error(500, f"internal error: {type(exc).__name__}: {exc}")


SOCKET_UMASK = 0o177
"""The umask around the socket's bind: the file is born 0600 (owner read/write), never open to others."""


def bind_private(path: str) -> socket.socket:
    """A unix socket bound at ``path`` with mode 0600 from its first moment.

    bind() creates the file with mode 0777 minus the umask, so it is made under
    ``SOCKET_UMASK`` (a chmod after the bind would leave a window where anyone can connect).
    We hold the data dir lock, so any socket file left at ``path`` is from a dead node.
    """
    if os.path.exists(path):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        old = os.umask(SOCKET_UMASK)
        try:
            sock.bind(path)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)  # the umask only takes bits away; say exactly what we want
    except BaseException:
        sock.close()
        raise
    return sock


async def read_request(reader: asyncio.StreamReader) -> Request:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        raise HttpError(413, "request headers too large") from None
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise HttpError(400, "malformed request line")
    headers = {}
    for line in lines[1:]:
        if line:
            name, sep, value = line.partition(":")
            if not sep:
                raise HttpError(400, "malformed header line")
            headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        raise HttpError(411, "chunked bodies are not supported; send Content-Length")
    try:
        length = int(headers.get("content-length", "0"))
    except ValueError:
        raise HttpError(400, "bad Content-Length") from None
    if not 0 <= length <= MAX_BODY_BYTES:
        raise HttpError(413, f"body over {MAX_BODY_BYTES} bytes")
    body = await reader.readexactly(length) if length else b""
    path, _, query = parts[1].partition("?")
    return Request(parts[0].upper(), path, headers, body, query)


def render(response: Response) -> bytes:
    reason = REASONS.get(response.status, "Unknown")
    head = (f"HTTP/1.1 {response.status} {reason}\r\n"
            f"Content-Type: {response.content_type}\r\n"
            f"Content-Length: {len(response.body)}\r\n"
            "Connection: close\r\n\r\n")
    return head.encode("latin-1") + response.body
