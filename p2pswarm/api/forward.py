"""API calls on a worker that need the Raft state are answered by a Raft member.

A worker outside the Raft group holds no replica: its own cluster state is empty, so ``service ls``
there would show nothing, and a write it proposed would commit without the worker ever applying it
(the call would wait for its timeout and report a failure that did not happen).  So the node's API
handler is an :class:`ApiForwarder` around the audited router:

* **On a worker**, a call to an endpoint of :data:`FORWARDED` (services, secrets, configs, the KV
  store, nodes, join token and CA, client certificates, the audit log, backups) travels as an
  :class:`~p2pswarm.api.messages.ApiCall` over the node transport (CURVE-authenticated in a secure
  cluster) to one live Raft member, chosen by rendezvous hashing like the assignment server; the
  member's :class:`~p2pswarm.api.messages.ApiAnswer` is the response.  No member reachable, or no
  answer within :data:`FORWARD_TIMEOUT`: a one-line 503.  A member that stops being a live peer before
  it answers (it crashed): a read goes to the next member, anything else is a 503 at once.  Node-local
  endpoints (info, members, mesh, metrics, faults, shutdown, this node's volumes, its security view,
  Raft status) answer locally.
* **On a member**, a forwarded call from a live peer runs through the same audited router (the
  audit log names ``caller via worker``), with the caller's role checked again for a remote client
  (:mod:`p2pswarm.api.roles`); at most :data:`MAX_SERVING` at once, the rest answered busy.  A
  member never forwards further, and refuses calls outside :data:`FORWARDED`.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
from collections import Counter
from typing import Any, Callable

from p2pswarm import wire
from p2pswarm.api import roles
from p2pswarm.api.messages import API_MESSAGES, MAX_ANSWER_BYTES, ApiAnswer, ApiCall
from p2pswarm.api.paths import split
from p2pswarm.api.server import HttpError, Request, Response
from p2pswarm.assignments.core import choose_server
from p2pswarm.membership.messages import LIVE

log = logging.getLogger("p2pswarm.api")

FORWARDED = ("/v1/services", "/v1/secrets", "/v1/configs", "/v1/kv/", "/v1/nodes/", "/v1/security/join-token",
             "/v1/security/ca", "/v1/security/client-certs", "/v1/security/api-ca", "/v1/audit",
             "/v1/cluster/backup", "/v1/cluster/restore")
"""Endpoint patterns (prefixes) that read or write the replicated state: a worker forwards them."""
FORWARD_TIMEOUT = 30.0
"""Seconds a worker waits for the member's answer (a write waits for its commit there; a backup takes a while)."""
MAX_SERVING = 32
"""Forwarded calls a member runs at once; more are answered 503 busy (the worker's caller retries)."""
LIVENESS_CHECK = 0.5
"""Seconds between looks at whether the member a call waits on is still a live peer."""


def forwarded(endpoint: str | None) -> bool:
    return endpoint is not None and split(endpoint)[1].startswith(FORWARDED)


async def _answer_of(handler: Any, request: Request) -> Response:
    """``handler``'s response to ``request`` (a router answers some requests at once, awaits others)."""
    response = handler(request)
    return await response if inspect.isawaitable(response) else response


class ApiForwarder:
    MESSAGES = API_MESSAGES

    def __init__(self, inner: Any, node_id: str, *, is_worker: Callable[[], bool],
                 members: Callable[[], list[str]], is_peer: Callable[[str], bool],
                 send: Callable[[str, Any], bool], name_of: Callable[[str], str] = str,
                 timeout: float = FORWARD_TIMEOUT) -> None:
        """``inner``: the audited router; ``members()``: the live Raft members but this node; ``is_peer(node)``:
        a live member of the gossip; ``send(node, message)``: False when it could not be sent."""
        self.inner, self.node_id = inner, node_id
        self.is_worker, self.members, self.is_peer = is_worker, members, is_peer
        self.send, self.name_of, self.timeout = send, name_of, timeout
        shared = getattr(inner, "counters", None)
        self.counters: Counter[str] = shared if isinstance(shared, Counter) else Counter()
        """Shared with the audited router's (the node's ``remote_api_stats`` reports them)."""
        self._ids = itertools.count(1)
        self._waiting: dict[int, tuple[str, asyncio.Future]] = {}
        self._serving: set[asyncio.Task] = set()

    @property
    def node(self) -> Any:
        return self.inner.node

    def endpoint(self, request: Request) -> str | None:
        return self.inner.endpoint(request)

    def record(self, request: Request, endpoint: str | None, status: int) -> None:
        """The remote listener audits its own refusals (a role too low) through the handler it was given: this
        one, wherever the node wires it (:class:`p2pswarm.api.remote.AuditedHandler`)."""
        self.inner.record(request, endpoint, status)

    async def __call__(self, request: Request) -> Response:
        endpoint = self.inner.endpoint(request)
        if not forwarded(endpoint) or not self.is_worker():
            return await _answer_of(self.inner, request)
        return await self._forward(request)

    # ------------------------------------------------------------ worker side

    async def _forward(self, request: Request) -> Response:
        """Forward to a live member; a read (an endpoint the read-only role may call) whose member dies before
        answering goes to the next one, anything else answers 503 at once (a write may have committed: the
        caller must look before retrying)."""
        what = f"{request.method} {request.path}"
        tried: set[str] = set()
        while True:
            member = choose_server(self.node_id, [m for m in self.members() if m not in tried])
            if member is None:
                self.counters["forward_no_member"] += 1
                raise HttpError(503, f"this node is a worker outside the Raft group and no Raft member is reachable "
                                     f"to answer {what}; retry in a moment, or run the command on a member "
                                     f"(`p2pswarm node ls` shows each node's role)")
            tried.add(member)
            reply = await self._call(member, request, what)
            if reply is not None:
                return Response(reply.status, reply.body, reply.content_type)
            self.counters["forward_member_lost"] += 1
            if roles.required(self.inner.endpoint(request)) != roles.READ:
                raise HttpError(503, f"Raft member {self.name_of(member)} left the cluster before answering {what} "
                                     f"(the write's outcome is unknown: check before retrying)")

    async def _call(self, member: str, request: Request, what: str) -> ApiAnswer | None:
        """``member``'s answer; None when it stopped being a live peer first (looked at every
        :data:`LIVENESS_CHECK` s: SWIM declares a crashed member dead in seconds, far sooner than the timeout)."""
        call = next(self._ids)
        loop = asyncio.get_running_loop()
        answer: asyncio.Future = loop.create_future()
        self._waiting[call] = (member, answer)
        deadline = loop.time() + self.timeout
        try:
            if not self.send(member, ApiCall(call, self.node_id, request.method, request.path, request.query,
                                             request.body, request.caller, request.role)):
                raise HttpError(503, f"could not reach Raft member {self.name_of(member)} to answer {what}; "
                                     f"retry in a moment")
            self.counters["forwarded"] += 1
            while not answer.done():
                left = deadline - loop.time()
                if left <= 0:
                    self.counters["forward_timeouts"] += 1
                    raise HttpError(503, f"Raft member {self.name_of(member)} did not answer {what} within "
                                         f"{self.timeout:g} s (a write's outcome is unknown: check before retrying)")
                await asyncio.wait({answer}, timeout=min(LIVENESS_CHECK, left))
                if not answer.done() and not self.is_peer(member):
                    return None
            return answer.result()
        finally:
            self._waiting.pop(call, None)

    def receive(self, msg: Any) -> None:
        if isinstance(msg, ApiCall):
            self._on_call(msg)
            return
        waiting = self._waiting.get(msg.call)
        if waiting is None or waiting[0] != msg.source or waiting[1].done():
            self.counters["unexpected_answers"] += 1
            return
        waiting[1].set_result(msg)

    # ------------------------------------------------------------ member side

    def _on_call(self, call: ApiCall) -> None:
        if not self.is_peer(call.source):
            self.counters["calls_refused"] += 1
            return
        if self.is_worker():
            self._answer(call, Response.error(503, "the node asked is not a Raft member (any more); retry"))
        elif len(self._serving) >= MAX_SERVING:
            self.counters["calls_busy"] += 1
            self._answer(call, Response.error(503, "the Raft member is answering too many forwarded calls; retry"))
        else:
            task = asyncio.ensure_future(self._serve(call))
            self._serving.add(task)
            task.add_done_callback(self._serving.discard)

    async def _serve(self, call: ApiCall) -> None:
        request = Request(call.method, call.path, {}, call.body, call.query,
                          caller=f"{call.caller} via {self.name_of(call.source)}", role=call.role)
        endpoint = self.inner.endpoint(request)
        needed = roles.required(endpoint)
        if not forwarded(endpoint):
            response = Response.error(403, f"{call.method} {call.path} is not answered for other nodes; run it on "
                                           f"the node itself")
        elif call.role != "local" and not roles.allows(call.role, needed):
            response = Response.error(403, roles.refusal(endpoint, call.role, call.method, call.path))
        else:
            try:
                response = await _answer_of(self.inner, request)
            except HttpError as exc:
                response = Response.error(exc.status, str(exc))
            except Exception as exc:  # the router's own failures are 500s on the unix socket too
                log.error("forwarded API %s %s failed", call.method, call.path, exc_info=True)
                response = Response.error(500, f"internal error: {type(exc).__name__}: {exc}")
        if len(response.body) > MAX_ANSWER_BYTES:
            response = Response.error(502, f"the answer is {len(response.body)} bytes, over the {MAX_ANSWER_BYTES} "
                                           f"a member sends to a worker; run the command on a Raft member")
        self.counters["calls_served"] += 1
        self._answer(call, response)

    def _answer(self, call: ApiCall, response: Response) -> None:
        if not self.send(call.source, ApiAnswer(call.call, self.node_id, response.status, response.content_type,
                                                response.body)):
            self.counters["answers_dropped"] += 1

    async def close(self) -> None:
        for task in list(self._serving):
            task.cancel()
        await asyncio.gather(*self._serving, return_exceptions=True)
        for _, answer in self._waiting.values():
            if not answer.done():
                answer.cancel()
        await self.inner.close()


def for_node(node: Any, inner: Any) -> ApiForwarder:
    """The forwarder of a running :class:`p2pswarm.node.daemon.Node` (its assignments host says whether it is a
    worker and which Raft members are live; its SWIM and transport carry the calls)."""
    def is_worker() -> bool:
        return node.assignments is not None and node.assignments.is_worker()

    def members() -> list[str]:
        live = node.assignments.driver.members() if node.assignments is not None else {}
        return [m for m in live if m != node.node_id]

    def member(peer: str) -> Any:
        return node.swim.member(peer) if node.swim is not None else None

    def is_peer(peer: str) -> bool:
        m = member(peer)
        return m is not None and m.status in LIVE

    def send(peer: str, msg: Any) -> bool:
        m = member(peer)
        return m is not None and bool(node.transport.send(m.addr, wire.encode(msg), True))

    def name_of(peer: str) -> str:
        m = member(peer)
        return m.meta.name if m is not None and m.meta.name else peer
    return ApiForwarder(inner, node.node_id, is_worker=is_worker, members=members, is_peer=is_peer, send=send,
                        name_of=name_of)
