"""SWIM messages: probes, gossip news and full-state push/pull (kinds: :data:`p2pswarm.wire.KINDS`)."""

from __future__ import annotations

from dataclasses import dataclass

from p2pswarm.wire import (
    ADDR,
    LABELS,
    MAX_LABEL_LEN,
    MAX_LABELS,
    MAX_MEMBERS,
    MAX_NAME_LEN,
    MAX_RECORD_BYTES,
    MAX_UPDATES,
    NODE_ID,
    WireStruct,
    any_message,
    blob,
    boolean,
    item,
    message,
    nested,
    number,
    one_of,
    pairs,
    seq,
    struct,
    text,
    uint,
)

ALIVE, SUSPECT, DEAD, LEFT = "alive", "suspect", "dead", "left"
STATUSES = (ALIVE, SUSPECT, DEAD, LEFT)
LIVE = (ALIVE, SUSPECT)
"""The statuses of a member that is up: a suspect still answers, votes and serves until SWIM declares it
dead.  Every layer (Raft, autopilot, scheduler, mesh, logs, security) counts live members with this."""
MAX_CERT_BYTES = 4096
"""A node certificate (DER) in a member's metadata; ours are ~430 bytes (see p2pswarm.security.pki)."""
MAX_CHAIN = 4


@struct
@dataclass(frozen=True, slots=True)
class Meta(WireStruct):
    """What a node tells the cluster about itself; changes bump its incarnation.

    In a secure cluster ``cert`` is the node's certificate (DER, from the cluster CA) and
    ``chain`` the cross certificates to present with it during a CA rotation; receivers
    verify them before they admit the node's transport key (:mod:`p2pswarm.security.host`).
    Both are empty in a plaintext cluster.  Metadata rides on Alive news and push/pull
    member states, so every member learns a newcomer's certificate with the newcomer.
    """

    name: str
    labels: tuple = ()
    capacity: tuple = ()
    version: str = ""
    started_ms: int = 0
    cert: bytes = b""
    chain: tuple = ()
    SCHEMA = (("name", text(MAX_NAME_LEN)), ("labels", LABELS),
              ("capacity", pairs(text(MAX_LABEL_LEN, 1), number, MAX_LABELS)),
              ("version", text(64)), ("started_ms", uint()), ("cert", blob(MAX_CERT_BYTES)),
              ("chain", seq(blob(MAX_CERT_BYTES), MAX_CHAIN)))


# ------------------------------------------------------------- news items

@item(1)
@dataclass(frozen=True, slots=True)
class Alive(WireStruct):
    node: str
    incarnation: int
    addr: str
    meta: Meta
    SCHEMA = (("node", NODE_ID), ("incarnation", uint(32)), ("addr", ADDR), ("meta", nested(Meta)))


@item(2)
@dataclass(frozen=True, slots=True)
class Suspect(WireStruct):
    node: str
    incarnation: int
    by: str
    SCHEMA = (("node", NODE_ID), ("incarnation", uint(32)), ("by", NODE_ID))


@item(3)
@dataclass(frozen=True, slots=True)
class Dead(WireStruct):
    """Death of ``node``; ``left`` marks a graceful leave announced by the node itself."""

    node: str
    incarnation: int
    by: str
    left: bool
    SCHEMA = (("node", NODE_ID), ("incarnation", uint(32)), ("by", NODE_ID), ("left", boolean))


@item(4)
@dataclass(frozen=True, slots=True)
class Record(WireStruct):
    """A node's versioned state record (e.g. its task digest); the highest version wins."""

    node: str
    version: int
    payload: bytes
    SCHEMA = (("node", NODE_ID), ("version", uint()), ("payload", blob(MAX_RECORD_BYTES)))


NEWS = seq(any_message(Alive, Suspect, Dead, Record), MAX_UPDATES)


# ------------------------------------------------------------- messages

@message(10)
@dataclass(frozen=True, slots=True)
class Ping(WireStruct):
    seq: int
    source: str
    source_addr: str
    target: str
    news: tuple = ()
    SCHEMA = (("seq", uint(32)), ("source", NODE_ID), ("source_addr", ADDR), ("target", NODE_ID),
              ("news", NEWS))


@message(11)
@dataclass(frozen=True, slots=True)
class Ack(WireStruct):
    seq: int
    source: str
    news: tuple = ()
    SCHEMA = (("seq", uint(32)), ("source", NODE_ID), ("news", NEWS))


@message(12)
@dataclass(frozen=True, slots=True)
class PingReq(WireStruct):
    """Ask the receiver to probe ``target`` on our behalf (SWIM's indirect probe)."""

    seq: int
    source: str
    source_addr: str
    target: str
    target_addr: str
    news: tuple = ()
    SCHEMA = (("seq", uint(32)), ("source", NODE_ID), ("source_addr", ADDR), ("target", NODE_ID),
              ("target_addr", ADDR), ("news", NEWS))


@message(13)
@dataclass(frozen=True, slots=True)
class Nack(WireStruct):
    """Lifeguard: the relay is alive but the target did not answer it in time."""

    seq: int
    source: str
    SCHEMA = (("seq", uint(32)), ("source", NODE_ID))


@message(14)
@dataclass(frozen=True, slots=True)
class Gossip(WireStruct):
    source: str
    source_addr: str
    news: tuple
    SCHEMA = (("source", NODE_ID), ("source_addr", ADDR), ("news", NEWS))


@struct
@dataclass(frozen=True, slots=True)
class MemberState(WireStruct):
    node: str
    addr: str
    incarnation: int
    status: str
    meta: Meta
    SCHEMA = (("node", NODE_ID), ("addr", ADDR), ("incarnation", uint(32)),
              ("status", one_of(*STATUSES)), ("meta", nested(Meta)))


@message(15)
@dataclass(frozen=True, slots=True)
class PushPull(WireStruct):
    """Full-state exchange: on join, periodically, and to re-merge healed partitions."""

    source: str
    source_addr: str
    join: bool
    reply: bool
    members: tuple
    records: tuple
    SCHEMA = (("source", NODE_ID), ("source_addr", ADDR), ("join", boolean), ("reply", boolean),
              ("members", seq(nested(MemberState), MAX_MEMBERS)),
              ("records", seq(any_message(Record), MAX_MEMBERS)))


SWIM_MESSAGES = (Ping, Ack, PingReq, Nack, Gossip, PushPull)
