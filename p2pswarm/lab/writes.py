"""The acknowledged writes of a chaos run: issued during the run, read back after it.

Split from :mod:`p2pswarm.lab.chaos` because the run's one hard verdict, *no acknowledged
write is lost*, needs both halves to agree on what a write is: the writer records each
kv put (``chaos/<run>/<seq>``) or service/env update (generation ``seq``) with whether it
was acknowledged, and the verifier reads every acknowledged one back from the settled
cluster.  :class:`ChaosWrites` is mixed into :class:`p2pswarm.lab.chaos.ChaosRun`.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import urllib.parse
from typing import TYPE_CHECKING, Any

from p2pswarm.api.client import ApiClient, ApiError
from p2pswarm.lab.cluster import DEMO_SERVICE, LabNode

if TYPE_CHECKING:
    from p2pswarm.lab.scenario import Scenario

VERIFY_TIMEOUT = 30.0
"""Seconds, for all read-backs together, to read the acknowledged writes after the run (a write
that cannot be read back by then is reported as unverified, not lost)."""
KV_LANES = 4
"""kv puts in flight at once, at most."""


class ChaosWrites:
    """The writer and the verifier of :class:`p2pswarm.lab.chaos.ChaosRun` (see the module docstring)."""

    if TYPE_CHECKING:  # what the run provides (set in ChaosRun.__init__ / defined on ChaosRun)
        sc: Scenario
        run_id: str
        lock: threading.Lock
        stop_writer: threading.Event
        writes: list[dict]
        writing: list[str]
        notes: list[str]
        unverified: list[dict]
        skipped_writes: int

        def t(self) -> float: ...
        def up_nodes(self) -> list[LabNode]: ...
        def leader(self, record: bool = False) -> LabNode | None: ...

    def _writer(self) -> None:
        """Dispatch one write per slot (``writer.rate`` per second) until ``duration``.

        kv puts run in up to ``KV_LANES`` threads at once, so that a write stuck on a node
        without quorum does not stop the others; service updates run one at a time (each
        reads the version it updates, so their order is the order they were applied). Nodes
        are taken round-robin among those that are up and have no write in flight. A slot
        without a free lane or node is skipped and counted, never queued."""
        sc = self.sc
        if sc.write_rate <= 0:
            return
        kv_busy = threading.Semaphore(KV_LANES)
        svc_busy = threading.Semaphore(1)
        workers: list[threading.Thread] = []
        i = 0
        rr = 0
        while not self.stop_writer.is_set():
            due = i / sc.write_rate
            if due >= sc.duration:
                break
            wait = due - self.t()
            if wait > 0 and self.stop_writer.wait(wait):
                break
            kind = sc.write_kinds[i % len(sc.write_kinds)]
            i += 1
            with self.lock:  # a node still busy with a write (e.g. no quorum on its side) gets no other
                busy = set(self.writing)
            up = [n for n in self.up_nodes() if n.name not in busy]
            lane = kv_busy if kind == "kv" else svc_busy
            if not up or not lane.acquire(blocking=False):
                self.skipped_writes += 1
                continue
            node = up[rr % len(up)]
            rr += 1
            with self.lock:
                self.writing.append(node.name)
            th = threading.Thread(target=self._write, args=(node, kind, i, lane), daemon=True)
            workers.append(th)
            th.start()
        for th in workers:
            th.join(timeout=max(0.0, sc.write_timeout + 2))

    def _write(self, node: LabNode, kind: str, seq: int, lane: threading.Semaphore) -> None:
        start = self.t()
        entry: dict[str, Any] = {"seq": seq, "kind": kind, "node": node.name, "t": start}
        try:
            if kind == "kv":
                entry["key"] = f"chaos/{self.run_id}/{seq:05d}"
                ApiClient(node.datadir, timeout=self.sc.write_timeout).request(
                    "PUT", "/v1/kv/" + urllib.parse.quote(entry["key"], safe=""), {"value": str(seq)})
            else:
                entry["gen"] = seq
                entry["version"] = self._service_write(node, kind, seq)
            entry.update(ok=True, error="")
        except ApiError as exc:
            entry.update(ok=False, error=str(exc)[:200])
        finally:
            lane.release()
        entry["dt"] = round(self.t() - start, 3)
        with self.lock:
            self.writes.append(entry)
            self.writing.remove(node.name)

    def _service_write(self, node: LabNode, kind: str, gen: int) -> int | None:
        from p2pswarm.cluster.spec import ServiceSpec
        client = ApiClient(node.datadir, timeout=self.sc.write_timeout)
        info = client.get(f"/v1/services/{DEMO_SERVICE}")
        spec = ServiceSpec.from_dict(info["spec"])
        if kind == "service":
            spec = spec.replace(rollback=dataclasses.replace(spec.rollback, delay=gen / 1000.0))
        else:
            spec = spec.replace(env=tuple(sorted({**dict(spec.env), "GEN": str(gen)}.items())))
        done = client.request("POST", f"/v1/services/{DEMO_SERVICE}/update", {"spec": spec.to_dict(),
                                                                              "version": info["version"]})
        return done.get("version") if isinstance(done, dict) else None

    def _verify_writes(self) -> list[dict]:
        """Acknowledged writes missing from the final state (those that could not be read back
        at all are recorded in ``self.unverified`` instead)."""
        acked = [w for w in self.writes if w["ok"]]
        lost: list[dict] = []
        deadline = time.monotonic() + VERIFY_TIMEOUT
        for w in (w for w in acked if w["kind"] == "kv"):
            readable, value = self._read_kv(w["key"], deadline)
            if not readable:
                self.unverified.append({"kind": "kv", "seq": w["seq"], "key": w["key"]})
            elif value != str(w["seq"]):
                lost.append({"kind": "kv", "seq": w["seq"], "key": w["key"], "acked_at": w["t"] + w["dt"],
                             "found": value})
        gens = {k: max((w["gen"] for w in acked if w["kind"] == k), default=0) for k in ("service", "env")}
        if gens["service"] or gens["env"]:
            final = self._final_gens(gens, deadline)
            for w in acked:
                if w["kind"] not in ("service", "env"):
                    continue
                if w["kind"] not in final:
                    self.unverified.append({"kind": w["kind"], "seq": w["seq"], "gen": w["gen"]})
                elif final[w["kind"]] < w["gen"]:
                    lost.append({"kind": w["kind"], "seq": w["seq"], "gen": w["gen"], "acked_at": w["t"] + w["dt"],
                                 "found": final[w["kind"]]})
        if self.unverified:
            self.notes.append(f"{len(self.unverified)} acknowledged writes could not be read back within "
                              f"{VERIFY_TIMEOUT:g} s (not counted as lost)")
        return lost

    def _read_kv(self, key: str, deadline: float) -> tuple[bool, str | None]:
        """(readable, value) by a linearizable read on any up node; value None: no such key."""
        path = "/v1/kv/" + urllib.parse.quote(key, safe="")
        while True:
            for node in self.up_nodes():
                try:
                    return True, node.api(timeout=5.0).get(path)["value"]
                except ApiError as exc:
                    if exc.status == 404:
                        return True, None
            if time.monotonic() > deadline:
                return False, None
            time.sleep(0.5)

    def _final_gens(self, want: dict[str, int], deadline: float) -> dict[str, int]:
        """The generations in the leader's applied spec (waiting a moment for it to apply the last writes)."""
        final: dict[str, int] = {}
        while True:
            leader = self.leader()
            if leader is not None:
                try:
                    spec = leader.api(timeout=5.0).get(f"/v1/services/{DEMO_SERVICE}")["spec"]
                    final = {"service": round(float(spec["rollback"]["delay"]) * 1000),
                             "env": int(dict(spec.get("env", [])).get("GEN", 0) or 0)}
                    if all(final[k] >= v for k, v in want.items()):
                        return final
                except (ApiError, KeyError, ValueError, TypeError):
                    pass
            if time.monotonic() > deadline:
                return final
            time.sleep(0.5)
