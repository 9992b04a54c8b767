#!/usr/bin/env python3
"""Fuzz the wire decoder and the join handshake: only the defined errors may escape.

    python simulations/fuzz_security.py                  # 1,000,000 inputs, seed 1
    python simulations/fuzz_security.py --count 20000 --seed 7

Every input goes through ``wire.decode``, which may raise only ``WireError``.  A
decoded message of any kind goes to ``Sponsor.handle``, which may not raise at
all (it answers with a grant, a refusal or a key reply), and a decoded join reply
goes to ``Joiner.handle``, which may raise only ``JoinError`` (and may succeed
only with a certificate for its own id and key under the pinned CA).

Inputs, by family (fractions of ``--count``):

* ``random``   random bytes, 0-600 long, msgpack-flavoured or not;
* ``mutated``  valid encodings of every registered kind (SWIM 10-15, Raft 32-43,
               join 64-68) with bit flips, byte overwrites, truncation, insertion,
               deletion, duplication, splicing and hostile msgpack headers
               (huge lengths, reserved 0xc1, ext types);
* ``struct``   valid msgpack trees with nodes replaced by values of other types;
* ``join_req`` join requests with fields changed to odd but well-typed values
               (versions, names, ids of members and revoked nodes, low-order
               X25519 keys, timestamps), *re-proved with the real token secret*,
               so they pass the HMAC and reach the sponsor's later checks and its
               certificate issuing;
* ``grant``    join grants with mutated certificates, chains, ids, versions and
               sealed keys, *re-MACed with the real secret*, so they reach pinning,
               certificate parsing and verification and unsealing on the joiner
               (half of them are left with the stale MAC);
* ``oversized`` hostile containers (up to wire.MAX_MESSAGE_BYTES, one in OVERSIZED_FULL
               of them the whole 4 MiB): floods of empty maps, one-element arrays and
               array headers, huge declared counts, and such a container spliced into a
               valid message at any field, so decoding must refuse them unbuilt.

``rss_growth_mb`` is how much the resident set of this process grew over the run (from
/proc/self/status after the setup to the end; at most RSS_GROWTH_LIMIT_MB), and
``peak_rss_mb`` its high-water mark: hostile inputs must not make decoding hold memory.

Progress goes to stderr; the last line of stdout is one JSON object.  Exit
status 1 if anything else escaped (each such input is printed, hex, to stderr) or
the resident set grew by more than RSS_GROWTH_LIMIT_MB.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import resource
import sys
import time
import traceback
from collections import Counter
from pathlib import Path

import msgpack

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from p2pswarm import wire  # noqa: E402
from p2pswarm.consensus import messages as raft  # noqa: E402
from p2pswarm.membership import messages as swim  # noqa: E402
from p2pswarm.security.errors import JoinError  # noqa: E402
from p2pswarm.security.join import JOIN_CODES, JOIN_WINDOW, SPONSOR_ENTROPY, Joiner, Sponsor, grant_mac, request_proof  # noqa: E402
from p2pswarm.security.keys import CurveKeys  # noqa: E402
from p2pswarm.security.messages import JoinGrant, JoinRefused, JoinRequest, KeyReply, KeyRequest  # noqa: E402
from p2pswarm.security.pki import CertAuthority, RevocationList, TrustBundle  # noqa: E402
from p2pswarm.security.tokens import TokenState  # noqa: E402
from p2pswarm.testing.msgtree import paths, replaced  # noqa: E402

MIX = (("random", 0.20), ("mutated", 0.35), ("struct", 0.20), ("join_req", 0.08), ("grant", 0.07),
       ("oversized", 0.10))
OVERSIZED_SIZES = (16, 256, 4096, 65536)
"""Bytes of most hostile containers (cheap to make, so a million inputs stay a minute's run)."""
OVERSIZED_FULL = 2000
"""One oversized input in this many is a whole wire.MAX_MESSAGE_BYTES frame (~50 per million)."""
FLOODS = (b"\x80", b"\x90", b"\x91", b"\x91\xc0", b"\xc0", b"\xdc\xff\xff", b"\xdd\x00\x01\x00\x00", b"\xa0",
          b"\xc4\x00", b"\x81\xa0\x80", b"\xcd\x01\x00")
"""One-to-five-byte msgpack values that each build a container or an object when decoded."""
RSS_GROWTH_LIMIT_MB = 20
HOSTILE = [b"\xc1", b"\xc0", b"\xdb\xff\xff\xff\xff", b"\xdd\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff",
           b"\xc6\x7f\xff\xff\xff", b"\xd9\xff", b"\xc7\x05\x01", b"\xd4\x00\x00", b"\xcf" + b"\xff" * 8,
           b"\xd3" + b"\x80" + b"\x00" * 7, b"\xcb\x7f\xf8\x00\x00\x00\x00\x00\x00", b"\x9f", b"\x90", b"\xa0"]
LOW_ORDER = [bytes(32), b"\x01" + bytes(31),
             bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
             b"\xff" * 32]
ODD_TEXT = ["", "x" * 128, "\u0000", "é" * 40, "\U0001f600" * 30, "a\nb", "-", "*", "CN=x,O=y", "../../etc"]


class World:
    """One cluster: CA, token, a sponsor, and joiners with their valid grants."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.now = 1_750_000_000.0
        self.ca = CertAuthority.create("fuzzc1u5te400000", self.now, rng.randbytes(32), rng.randbytes(16))
        self.bundle = TrustBundle(self.ca.cluster_id, [self.ca.cert_der])
        self.tokens = TokenState.create(rng.randbytes(20), self.now)
        self.token = self.tokens.token(self.ca.digest)
        self.sponsor_keys = CurveKeys.from_secret(rng.randbytes(32))
        self.sponsor_cert = self.ca.issue("5p0450r000000001", "sponsor", self.sponsor_keys.public, self.now,
                                          rng.randbytes(16))
        revoked = RevocationList(self.ca.cluster_id).revoke(nodes=["4ev0ked000000001"])
        self.sponsor = Sponsor("5p0450r000000001", self.sponsor_cert, bundle=self.bundle, tokens=self.tokens,
                               revocations=revoked, ca=self.ca, cluster_key=rng.randbytes(32),
                               known_key={"5p0450r000000001": self.sponsor_keys.public}.get)
        self.pairs = []  # (joiner, request, valid grant)
        for i in range(24):
            j = Joiner(self.token, f"j01ne4{i:010d}", f"joiner-{i}", CurveKeys.from_secret(rng.randbytes(32)))
            req = j.request(self.now, rng.randbytes(16))
            grant = self.sponsor.handle(req, j.keys.public, self.now, rng.randbytes(SPONSOR_ENTROPY))
            assert isinstance(grant, JoinGrant)
            self.pairs.append((j, req, grant))
        j, req, grant = self.pairs[0]
        news = (swim.Alive("a", 3, "10.0.0.1:7946", swim.Meta("a", (("zone", "z"),), (("cpus", 2.0),), "0.1", 5)),
                swim.Suspect("b", 1, "a"), swim.Dead("c", 2, "a", False), swim.Record("a", 9, b"digest"))
        conf = raft.ConfState(("a", "b", "c"), ("d",))
        self.samples = [wire.encode(m) for m in (
            swim.Ping(1, "a", "10.0.0.1:7946", "b", news), swim.Ack(2, "b", news[:2]),
            swim.PingReq(3, "a", "10.0.0.1:7946", "c", "10.0.0.3:7946"), swim.Nack(3, "c"),
            swim.Gossip("a", "10.0.0.1:7946", news),
            swim.PushPull("a", "10.0.0.1:7946", True, False,
                          (swim.MemberState("a", "10.0.0.1:7946", 3, "alive", swim.Meta("a")),),
                          (swim.Record("a", 1, b"r"),)),
            raft.AppendEntries(5, "a", 10, 4, 9, (raft.Entry(5, 11, "normal", b"x"), raft.Entry(5, 12, "noop"))),
            raft.AppendResp(5, "b", 12, False, 0, 0), raft.RequestVote(6, "c", 12, 5, True, False),
            raft.VoteResp(6, "a", True), raft.Heartbeat(5, "a", 9, 3), raft.HeartbeatResp(5, "b", 3),
            raft.InstallSnapshot(5, "a", 100, 4, conf, 8, 4, b"snap", True), raft.SnapshotResp(5, "b", 3, 100, 4),
            req, grant, JoinRefused(req.nonce, "bad_token", 1, 1, 5), KeyRequest(self.ca.digest, req.nonce),
            KeyReply(req.nonce, self.sponsor_cert, (self.ca.cert_der,)),
        )]


# ------------------------------------------------------------------ mutators

def mutate_bytes(rng: random.Random, data: bytes, others: list[bytes]) -> bytes:
    b = bytearray(data)
    for _ in range(rng.choice((1, 1, 1, 2, 3, 6))):
        op = rng.randrange(9)
        if not b:
            b += rng.randbytes(rng.randint(1, 8))
            continue
        i = rng.randrange(len(b))
        if op == 0:
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1:
            b[i] = rng.randrange(256)
        elif op == 2:
            del b[rng.randrange(len(b) + 1):]
        elif op == 3:
            b[i:i] = rng.randbytes(rng.randint(1, 16))
        elif op == 4:
            del b[i:i + rng.randint(1, 16)]
        elif op == 5:
            j = rng.randrange(len(b))
            b[j:j] = b[i:i + rng.randint(1, 32)]
        elif op == 6:
            other = rng.choice(others)
            b = b[:i] + bytearray(other[rng.randrange(len(other)):])
        elif op == 7:
            b[i:i + 1] = rng.choice(HOSTILE)
        else:
            b[i] = rng.choice((0x00, 0x7f, 0x80, 0xff, 0x90, 0x91, 0xa0, 0xc0, 0xc2, 0xc3, 0xcc, 0xdc))
    return bytes(b)


def hostile_container(rng: random.Random, size: int) -> bytes:
    """About ``size`` bytes: an array or map header (often declaring more than follows) then a flood."""
    fill = rng.choice(FLOODS)
    n = max(1, size // len(fill))
    count = rng.choice((n, n, 2**16 - 1, 2**32 - 1, rng.randrange(2**32)))
    header = rng.choice((b"\xdd" + count.to_bytes(4, "big"), b"\xdf" + count.to_bytes(4, "big"),
                         b"\xdc" + min(count, 2**16 - 1).to_bytes(2, "big"), b"\x91" * rng.randint(1, 64), b""))
    return header + fill * n


def oversized(rng: random.Random, samples: list[bytes]) -> bytes:
    """A hostile container alone, or spliced into a valid message in place of one of its fields."""
    size = wire.MAX_MESSAGE_BYTES - 64 if rng.randrange(OVERSIZED_FULL) == 0 else rng.choice(OVERSIZED_SIZES)
    hostile = hostile_container(rng, size)
    if rng.random() < 0.3:
        return hostile[:wire.MAX_MESSAGE_BYTES]
    marker = b"\x00<hostile>\xff"
    tree = msgpack.unpackb(rng.choice(samples), raw=False, use_list=True)
    tree = replaced(tree, rng.choice([p for p in paths(tree) if p]), marker)
    before, after = msgpack.packb(tree, use_bin_type=True).split(msgpack.packb(marker, use_bin_type=True), 1)
    return (before + hostile + after)[:wire.MAX_MESSAGE_BYTES]


def rss_mb() -> float:
    """This process's resident set now (VmRSS), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def random_value(rng: random.Random, depth: int = 0):
    kind = rng.randrange(12 if depth < 2 else 9)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.randint(-2**63, 2**64 - 1)
    if kind == 3:
        return rng.choice((0, 1, 10, 64, 2**32, -1))
    if kind == 4:
        return rng.random() * 1e6
    if kind == 5:
        return rng.choice((float("nan"), float("inf"), -0.0))
    if kind == 6:
        return rng.choice(ODD_TEXT)
    if kind == 7:
        return rng.randbytes(rng.choice((0, 1, 16, 32, 33)))
    if kind == 8:
        return rng.choice(("alive", "normal", "bad_token", "h:1", "a"))
    if kind == 9:
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    if kind == 10:
        return {str(rng.randint(0, 9)): random_value(rng, depth + 1)}
    return [random_value(rng, depth + 1) for _ in range(rng.randint(5, 12))]


def mutate_struct(rng: random.Random, data: bytes) -> bytes:
    tree = msgpack.unpackb(data, raw=False, use_list=True)
    for _ in range(rng.randint(1, 2)):
        tree = replaced(tree, rng.choice(list(paths(tree))), random_value(rng))
    return msgpack.packb(tree, use_bin_type=True)


def odd_request(rng: random.Random, w: World, now: float) -> tuple[JoinRequest, bytes | None]:
    """A well-typed, re-proved request with odd fields, and the CURVE key it 'arrives' from."""
    j, _, _ = rng.choice(w.pairs)
    req = j.request(now + rng.choice((0, 0, 0, 1, -1, JOIN_WINDOW + 1, -JOIN_WINDOW - 1, 1e6)), rng.randbytes(16))
    changes = {}
    for _ in range(rng.randint(1, 3)):
        field = rng.choice(("min_version", "max_version", "node_id", "name", "curve_public", "timestamp_ms",
                            "ca_digest", "nonce"))
        if field in ("min_version", "max_version"):
            changes[field] = rng.choice((0, 1, 2, 65535))
        elif field == "node_id":
            changes[field] = rng.choice(("5p0450r000000001", "4ev0ked000000001", "x", "i" * 64, "é", "new-node"))
        elif field == "name":
            changes[field] = rng.choice(ODD_TEXT)
        elif field == "curve_public":
            changes[field] = rng.choice(LOW_ORDER + [rng.randbytes(32)])
        elif field == "timestamp_ms":
            changes[field] = rng.choice((0, 2**64 - 1, int(now * 1000)))
        elif field == "ca_digest":
            changes[field] = rng.choice((bytes(32), rng.randbytes(32), w.ca.digest))
        else:
            changes[field] = rng.choice((req.nonce, bytes(16), rng.randbytes(16)))
    req = dataclasses.replace(req, **changes)
    if rng.random() < 0.9:
        req = dataclasses.replace(req, proof=request_proof(w.tokens.secret, req))
    key = rng.choice((req.curve_public, req.curve_public, None, rng.randbytes(32)))
    return req, key


def odd_grant(rng: random.Random, w: World) -> tuple[Joiner, JoinGrant]:
    j, req, grant = rng.choice(w.pairs)
    j.sent = req
    changes = {}
    for _ in range(rng.randint(1, 3)):
        field = rng.choice(("version", "nonce", "cluster_id", "node_cert", "chain", "sponsor_id", "sponsor_cert",
                            "sealed_key"))
        if field == "version":
            changes[field] = rng.choice((0, 1, 2, 65535))
        elif field == "nonce":
            changes[field] = rng.choice((bytes(16), rng.randbytes(16)))
        elif field == "cluster_id":
            changes[field] = rng.choice(("x", "fuzzc1u5te400000", "other"))
        elif field in ("node_cert", "sponsor_cert"):
            pool = [grant.node_cert, grant.sponsor_cert, w.ca.cert_der, rng.choice(w.pairs)[2].node_cert]
            changes[field] = (mutate_bytes(rng, rng.choice(pool), pool)[:4096] if rng.random() < 0.8
                              else rng.choice(pool))
        elif field == "chain":
            pool = [w.ca.cert_der, grant.node_cert, mutate_bytes(rng, w.ca.cert_der, [w.ca.cert_der])[:4096]]
            changes[field] = tuple(rng.choice(pool) for _ in range(rng.randint(0, 8)))
        elif field == "sponsor_id":
            changes[field] = rng.choice(("5p0450r000000001", j.node_id, "zz"))
        else:
            changes[field] = mutate_bytes(rng, grant.sealed_key, [grant.sealed_key])[:256]
    grant = dataclasses.replace(grant, **changes)
    if rng.random() < 0.5:
        grant = dataclasses.replace(grant, mac=grant_mac(w.tokens.secret, req.proof, grant))
    return j, grant


# ------------------------------------------------------------------ the run

def fuzz(count: int, seed: int = 1, progress=None) -> dict:
    rng = random.Random(seed)
    w = World(rng)
    families = [f for f, _ in MIX]
    weights = [p for _, p in MIX]
    by_family: Counter[str] = Counter()
    outcome: Counter[str] = Counter()
    unexpected: list[dict] = []
    now = w.now
    rss_start = rss_mb()
    started = time.perf_counter()

    def record(family: str, data: bytes | None, exc: BaseException) -> None:
        outcome["unexpected"] += 1
        if len(unexpected) < 20:
            unexpected.append({"family": family, "input": (data or b"").hex()[:2000],
                               "error": "".join(traceback.format_exception_only(type(exc), exc)).strip()})

    for n in range(count):
        if progress and n and n % 100_000 == 0:
            progress(n, time.perf_counter() - started)
        if n % 1000 == 0:  # let the replay cache empty: requests from long ago are refused by their timestamps
            now += 3 * JOIN_WINDOW
        family = rng.choices(families, weights)[0]
        by_family[family] += 1
        joiner = None
        data: bytes | None = None
        key = rng.randbytes(32)
        try:
            if family == "random":
                data = rng.randbytes(rng.choice((0, 1, 2, 3, 5, 8, 16, 40, 100, 600)))
                if data and rng.random() < 0.5:
                    data = bytes([rng.choice((0x92, 0x93, 0x94, 0x95, 0x9a, 0xdc))]) + b"\x01" + data
            elif family == "mutated":
                data = mutate_bytes(rng, rng.choice(w.samples), w.samples)
            elif family == "oversized":
                data = oversized(rng, w.samples)
            elif family == "struct":
                data = mutate_struct(rng, rng.choice(w.samples))
            elif family == "join_req":
                req, key = odd_request(rng, w, now)
                try:
                    data = wire.encode(req)
                except ValueError:
                    outcome["unencodable_request"] += 1
                    continue
            else:
                joiner, grant = odd_grant(rng, w)
                data = wire.encode(grant)
        except Exception as exc:  # a bug in the fuzzer itself is reported, not hidden
            record(family + "/generator", data, exc)
            continue

        try:
            msg = wire.decode(data)
        except wire.WireError:
            outcome["wire_error"] += 1
            continue
        except Exception as exc:
            record(family, data, exc)
            continue
        outcome["decoded"] += 1

        try:
            reply = w.sponsor.handle(msg, key, now, rng.randbytes(SPONSOR_ENTROPY))
            if not isinstance(reply, (JoinGrant, JoinRefused, KeyReply)):
                raise AssertionError(f"sponsor answered {type(reply).__name__}")
            outcome["sponsor_" + (reply.code if isinstance(reply, JoinRefused) else type(reply).__name__)] += 1
        except Exception as exc:
            record(family + "/sponsor", data, exc)

        if isinstance(msg, (JoinGrant, JoinRefused, KeyReply)):
            j = joiner or rng.choice(w.pairs)[0]
            if j.sent is None:
                j.sent = rng.choice(w.pairs)[1]
            try:
                result = j.handle(msg, w.now)
                if (result.identity.node_id != j.node_id or result.identity.curve_public != j.keys.public
                        or w.ca.digest not in result.bundle.digests):
                    raise AssertionError("the joiner accepted an unsound grant")
                outcome["joiner_accepted"] += 1
            except JoinError as exc:
                if exc.code not in JOIN_CODES or "\n" in str(exc):
                    record(family + "/joiner", data, AssertionError(f"bad JoinError {exc.code}: {exc}"))
                outcome["joiner_" + exc.code] += 1
            except Exception as exc:
                record(family + "/joiner", data, exc)

    seconds = time.perf_counter() - started
    return {"inputs": count, "seed": seed, "seconds": round(seconds, 1),
            "rss_growth_mb": round(rss_mb() - rss_start, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "inputs_per_s": round(count / seconds) if seconds else None,
            "by_family": dict(sorted(by_family.items())), "outcomes": dict(sorted(outcome.items())),
            "unexpected": outcome["unexpected"], "unexpected_examples": unexpected}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args()
    result = fuzz(args.count, args.seed,
                  progress=lambda n, s: print(f"{n:>9,} inputs, {s:6.1f} s", file=sys.stderr, flush=True))
    for ex in result["unexpected_examples"]:
        print(f"UNEXPECTED in {ex['family']}: {ex['error']}\n  input: {ex['input'][:200]}", file=sys.stderr)
    line = json.dumps(result, sort_keys=True)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(line)
    return 1 if result["unexpected"] or result["rss_growth_mb"] > RSS_GROWTH_LIMIT_MB else 0


if __name__ == "__main__":
    sys.exit(main())
