"""This node's event history: a JSON-lines file in the data dir with a bounded retention.

Events are stored as they are applied, because those applied before a Raft snapshot cannot be
derived again from the log: ``--since`` then works across restarts for as long as the retention
keeps them (``MAX_EVENTS`` and ``MAX_AGE``, whichever is reached first).  Each stored event gets a
node-local sequence number, the cursor ``events`` follows with.  A restarted node applies again the
entries after its last snapshot; the file remembers the highest log index it stored (``watermark``),
and :meth:`EventLog.fresh` tells the caller which entries are new.

The file only grows by appended lines; when it holds half again as many lines as it keeps, it is
rewritten (to a temporary file, then renamed) with a header line carrying the watermark and the
sequence, so neither goes back even when every event has aged out.  A damaged line is skipped.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable, Iterable

from p2pswarm.events.derive import Event

log = logging.getLogger("p2pswarm.events")

MAX_EVENTS = 10_000
"""Events kept (the oldest go first)."""
MAX_AGE = 24 * 3600.0
"""Seconds an event is kept."""
MAX_PAGE = 1000
"""Events one query returns; the cursor gives the rest."""


class EventLog:
    def __init__(self, path: Path | str, *, max_events: int = MAX_EVENTS, max_age: float = MAX_AGE,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.max_events, self.max_age, self.clock = max_events, max_age, clock
        self.events: deque[tuple[int, Event]] = deque()
        """(seq, event), oldest first."""
        self.seq = 0
        self.watermark = 0
        """The highest Raft log index whose events are stored (entries up to it are not new)."""
        self._lines = 0
        self._file: Any = None
        self._load()

    # ------------------------------------------------------------ writing

    def fresh(self, index: int) -> bool:
        """True when the entry at ``index`` was not recorded before (it is applied for the first time here)."""
        return index > self.watermark

    def add(self, events: Iterable[Event], index: int = 0) -> list[tuple[int, Event]]:
        """Store ``events`` (of log entry ``index``, 0 for local ones); returns them with their sequence."""
        stored = []
        for event in events:
            self.seq += 1
            stored.append((self.seq, event))
        self.watermark = max(self.watermark, index)
        if not stored:
            return stored
        self.events.extend(stored)
        self._write("".join(_line(seq, event) for seq, event in stored))
        self._lines += len(stored)
        self._trim()
        return stored

    def _write(self, text: str) -> None:
        try:
            if self._file is None:
                self._file = open(self.path, "a", encoding="utf-8")
            self._file.write(text)
            self._file.flush()
        except OSError as exc:  # a full disk loses history, never the node
            log.warning("cannot write the event history %s: %s", self.path, exc)

    def _trim(self) -> None:
        horizon = self.clock() - self.max_age
        while self.events and (len(self.events) > self.max_events or self.events[0][1].at < horizon):
            self.events.popleft()
        if self._lines > self.max_events + self.max_events // 2:
            self._rewrite()

    def _rewrite(self) -> None:
        header = json.dumps({"watermark": self.watermark, "seq": self.seq}) + "\n"
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(header + "".join(_line(seq, event) for seq, event in self.events))
            if self._file is not None:
                self._file.close()
                self._file = None
            os.replace(tmp, self.path)
            self._lines = len(self.events)
        except OSError as exc:
            log.warning("cannot rewrite the event history %s: %s", self.path, exc)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    # ------------------------------------------------------------ reading

    def _load(self) -> None:
        try:
            lines = self.path.read_text(encoding="utf-8", errors="replace").splitlines()
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("cannot read the event history %s: %s", self.path, exc)
            return
        bad = 0
        for text in lines:
            try:
                data = json.loads(text)
                if "watermark" in data:
                    self.watermark = max(self.watermark, int(data["watermark"]))
                    self.seq = max(self.seq, int(data["seq"]))
                    continue
                seq, event = int(data["seq"]), Event.from_dict(data)
            except (ValueError, TypeError, KeyError):
                bad += 1
                continue
            if seq <= self.seq:
                bad += 1  # out of order: a damaged file
                continue
            self.seq = seq
            self.watermark = max(self.watermark, event.index)
            self.events.append((seq, event))
        if bad:
            log.warning("skipped %d damaged line(s) of the event history %s", bad, self.path)
        self._lines = len(lines)
        self._trim()

    def query(self, *, after: int = 0, since: float | None = None, until: float | None = None,
              types: Iterable[str] = (), limit: int = MAX_PAGE) -> tuple[list[dict[str, Any]], int, bool]:
        """Events after sequence ``after`` that happened in [since, until] and are of ``types`` (all when
        empty), oldest first: ``(events as dicts with their seq, the cursor to pass next, more waiting)``."""
        wanted = set(types)
        out: list[dict[str, Any]] = []
        cursor = after
        for seq, event in self.events:
            if seq <= after:
                continue
            if len(out) >= limit:
                return out, cursor, True
            cursor = seq
            if wanted and event.type not in wanted:
                continue
            if (since is not None and event.at < since) or (until is not None and event.at > until):
                continue
            out.append({"seq": seq, **event.to_dict()})
        return out, max(after, self.seq), False


def _line(seq: int, event: Event) -> str:
    return json.dumps({"seq": seq, **event.to_dict()}, separators=(",", ":")) + "\n"
