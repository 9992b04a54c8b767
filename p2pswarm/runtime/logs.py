"""Size-rotated task logs, fed from the task's stdout/stderr pipes on the node's loop, and
their reader (``service logs``: tail, offsets to follow from, arrival times).

Why pipes and not "the child writes to a file, we copy-truncate": the node sees every
byte, so rotation is exact (no bytes lost between copy and truncate, no polling of file
sizes) and files never outgrow ``max_bytes``. Writes go to the page cache (no fsync), so
they do not stall the loop. If the node dies, the pipe breaks, but the task dies with it
anyway (PR_SET_PDEATHSIG). Files are 0600 and the node's: a task running as another user
neither reads nor rewrites its logs (the node writes them for it).

Files: ``<name>.log`` (current), ``<name>.log.1`` (previous) ... ``<name>.log.<keep-1>``, each
with a small time index beside it (``<name>.idx``, ``<name>.idx.1`` ...) so the log files
themselves stay exactly the task's bytes.  An index is text: a first line ``B <base>`` (the
stream offset of the log file's first byte: offsets count every byte the stream ever wrote,
so they survive rotation), then ``<offset in file> <unix time>`` marks: the bytes from that
offset on arrived at that time.  A mark is written at most every ``MARK_INTERVAL`` seconds,
so a line's time is exact to that; the index is bounded (a log rotates early when its index
reaches ``max_bytes // INDEX_SHARE``), so the files of one stream never exceed
``keep × max_bytes × (1 + 1/INDEX_SHARE)`` (with a 4 KiB floor on the index).
"""

from __future__ import annotations

import bisect
import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from p2pswarm.node.datadir import open_private_append
from p2pswarm.runtime import retention
from p2pswarm.runtime.base import STDERR, STDOUT

MARK_INTERVAL = 0.01
"""Seconds between two time marks of one log (a line's arrival time is exact to this)."""
INDEX_SHARE = 4
"""A log rotates early once its index reaches ``max_bytes // INDEX_SHARE`` bytes (at least 4 KiB)."""
MAX_LINE_BYTES = 16 * 1024
"""Longer lines are returned in pieces of this size (as Docker's log drivers split them)."""
TAIL_BLOCK = 64 * 1024
TAIL_SCAN_MAX = 8 * 1024 * 1024
"""Bytes a tail scans back at most per stream; lines further back are not counted."""


class RotatingLog:
    def __init__(self, path: Path, max_bytes: int, keep: int, clock: Callable[[], float] = time.time) -> None:
        if max_bytes < 1 or keep < 1:
            raise ValueError("log max_bytes and keep must be at least 1")
        self.path, self.max_bytes, self.keep, self.clock = path, max_bytes, keep, clock
        self.index_path = index_path(path)
        self._index_cap = max(4096, max_bytes // INDEX_SHARE)
        self._last_time = 0.0
        self._open(_base_of_new(path, keep))

    def _open(self, base: int) -> None:
        self._file = open_private_append(self.path)
        self._size = self._file.tell()
        self._index = open_private_append(self.index_path)
        self._index_size = self._index.tell()
        if self._index_size == 0:
            self._index_write(f"B {base}\n")
        else:
            base = _read_base(self.index_path) or 0
        self._base = base
        self._mark_time: float | None = None
        """Time of this file's last mark (None: none yet in this life)."""

    def write(self, data: bytes) -> None:
        """Append ``data``; rotate before a file would exceed ``max_bytes``, at the last
        newline that still fits when there is one (lines stay whole where possible)."""
        if data and self._size and self._index_size >= self._index_cap:
            self._rotate()  # a chatty trickle of tiny writes: keep the index bounded
        while data:
            room = self.max_bytes - self._size
            if len(data) <= room:
                self._append(data)
                return
            cut = data.rfind(b"\n", 0, room) + 1 if room > 0 else 0
            if cut == 0 and self._size == 0:
                cut = room  # one line longer than a whole file: split it
            self._append(data[:cut])
            data = data[cut:]
            self._rotate()

    def _append(self, data: bytes) -> None:
        if not data:
            return
        now = max(self.clock(), self._last_time)  # marks never go back in time
        if self._mark_time is None or now - self._mark_time >= MARK_INTERVAL:
            self._index_write(f"{self._size} {now:.6f}\n")
            self._mark_time = self._last_time = now
        self._file.write(data)
        self._size += len(data)

    def _index_write(self, line: str) -> None:
        raw = line.encode()
        self._index.write(raw)
        self._index_size += len(raw)

    def _rotate(self) -> None:
        next_base = self._base + self._size
        self._file.close()
        self._index.close()
        for i in range(self.keep - 1, 0, -1):
            for p in (self.path, self.index_path):
                older = rotated(p, i - 1)
                if older.exists():
                    os.replace(older, rotated(p, i))
        if self.keep == 1:
            self.path.unlink(missing_ok=True)
            self.index_path.unlink(missing_ok=True)
        self._open(next_base)

    def flush(self) -> None:
        self._file.flush()
        self._index.flush()

    def close(self) -> None:
        self._file.close()
        self._index.close()


class TaskFolders:
    """What every runtime keeps of a task under ``<data-dir>/tasks/<task-id>``: its log files, read by
    ``service logs`` whichever runtime wrote them. A runtime sets ``tasks_dir``, ``live`` and ``config.log_keep``."""

    tasks_dir: Path
    live: dict
    config: Any

    def task_dir(self, task_id: str) -> Path:
        return self.tasks_dir / task_id

    def log_paths(self, task_id: str) -> dict[str, list[Path]]:
        return {name: log_files(self.task_dir(task_id) / f"{name}.log", self.config.log_keep)
                for name in (STDOUT, STDERR)}

    def retire_task_dir(self, task_id: str, spec: Any) -> None:
        """Keep a forgotten task's logs for its ``log_retention`` (:mod:`p2pswarm.runtime.retention`), or
        delete its directory when there is nothing to keep (``spec`` None: delete)."""
        if task_id in self.live:
            raise RuntimeError(f"task {task_id} is still running")
        if spec is None or not retention.retire(self.task_dir(task_id), spec, time.time()):
            self.remove_task_dir(task_id)

    def retired(self, service: str) -> list[tuple[str, int]]:
        """``(task id, slot)`` of ``service``'s tasks whose logs are kept after the state forgot them."""
        return retention.retired_tasks(self.tasks_dir, service)

    def sweep_retired(self, now: float) -> list[str]:
        """Delete the kept logs whose retention is over; their task ids."""
        return retention.sweep(self.tasks_dir, now)

    def remove_task_dir(self, task_id: str) -> None:
        """Delete a finished task's directory (its logs); a running task's is a bug to delete."""
        if task_id in self.live:
            raise RuntimeError(f"task {task_id} is still running")
        folder = self.task_dir(task_id)
        if folder.is_dir():
            for f in folder.iterdir():
                f.unlink()
            folder.rmdir()


def rotated(path: Path, i: int) -> Path:
    return path if i == 0 else path.with_name(f"{path.name}.{i}")


def index_path(path: Path) -> Path:
    """``stdout.log`` -> ``stdout.idx`` (``rotated`` names its older files as for the log)."""
    name = path.name[:-4] if path.name.endswith(".log") else path.name
    return path.with_name(name + ".idx")


def log_files(path: Path, keep: int) -> list[Path]:
    """Existing files of one log, oldest first."""
    return [p for p in (rotated(path, i) for i in range(keep - 1, -1, -1)) if p.exists()]


def _read_base(idx: Path) -> int | None:
    try:
        with open(idx, "rb") as f:
            head = f.readline(64)
    except OSError:
        return None
    parts = head.split()
    if len(parts) == 2 and parts[0] == b"B" and parts[1].isdigit():
        return int(parts[1])
    return None


def _base_of_new(path: Path, keep: int) -> int:
    """Stream offset of a log file about to be created: where the previous file ended."""
    end = 0
    for i in range(keep - 1, 0, -1):
        p = rotated(path, i)
        try:
            size = p.stat().st_size
        except OSError:
            continue
        base = _read_base(rotated(index_path(path), i))
        end = max(end, base if base is not None else end) + size
    return end


# ------------------------------------------------------------------ reading


@dataclass
class _Index:
    ino: int
    parsed: int = 0
    """Bytes of the index file parsed so far (it only grows; a new inode starts over)."""
    base: int | None = None
    offsets: list[int] = field(default_factory=list)
    times: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class Segment:
    path: Path
    base: int
    size: int
    offsets: tuple | list
    times: tuple | list
    mtime: float
    indexed: bool


class LogReader:
    """Reads one node's task logs; caches parsed indexes (they only grow, so a poll parses
    just what was appended since the last one)."""

    MAX_CACHED = 512

    def __init__(self) -> None:
        self._cache: OrderedDict[Path, _Index] = OrderedDict()

    def stream(self, path: Path, keep: int) -> "StreamView":
        """The stream whose current file is ``path`` (e.g. ``tasks/T/stdout.log``)."""
        segments: list[Segment] = []
        end = 0
        for i in range(keep - 1, -1, -1):
            p = rotated(path, i)
            try:
                st = p.stat()
            except OSError:
                continue
            idx = self._index(rotated(index_path(path), i))
            base = idx.base if idx is not None and idx.base is not None and idx.base >= end else end
            segments.append(Segment(p, base, st.st_size, idx.offsets if idx else (), idx.times if idx else (),
                                    st.st_mtime, idx is not None and idx.base is not None))
            end = base + st.st_size
        return StreamView(segments)

    def _index(self, path: Path) -> _Index | None:
        try:
            st = path.stat()
        except OSError:
            self._cache.pop(path, None)
            return None
        idx = self._cache.get(path)
        if idx is None or idx.ino != st.st_ino or st.st_size < idx.parsed:
            idx = _Index(st.st_ino)
        self._cache[path] = idx
        self._cache.move_to_end(path)
        while len(self._cache) > self.MAX_CACHED:
            self._cache.popitem(last=False)
        if st.st_size > idx.parsed:
            try:
                with open(path, "rb") as f:
                    f.seek(idx.parsed)
                    data = f.read(st.st_size - idx.parsed)
            except OSError:
                return idx
            whole = data.rfind(b"\n") + 1  # a mark being written is parsed next time
            for line in data[:whole].split(b"\n")[:-1]:
                _parse_index_line(idx, line)
            idx.parsed += whole
        return idx


def _parse_index_line(idx: _Index, line: bytes) -> None:
    parts = line.split()
    if len(parts) != 2:
        return
    if parts[0] == b"B":
        if idx.base is None and parts[1].isdigit():
            idx.base = int(parts[1])
        return
    try:
        offset, at = int(parts[0]), float(parts[1])
    except ValueError:
        return
    if offset >= 0 and (not idx.offsets or offset >= idx.offsets[-1]) and at == at:
        idx.offsets.append(offset)
        idx.times.append(at)


class StreamView:
    """One stream's retained bytes as a single range ``[start, end)`` of stream offsets."""

    def __init__(self, segments: list[Segment]) -> None:
        self.segments = segments
        self.start = segments[0].base if segments else 0
        self.end = segments[-1].base + segments[-1].size if segments else 0

    def read(self, offset: int, size: int) -> bytes:
        offset = max(offset, self.start)
        out, want = [], min(size, self.end - offset)
        for seg in self.segments:
            if want <= 0:
                break
            if offset >= seg.base + seg.size:
                continue
            rel = max(0, offset - seg.base)
            try:
                with open(seg.path, "rb") as f:
                    f.seek(rel)
                    data = f.read(min(want, seg.size - rel))
            except OSError:
                break
            out.append(data)
            asked = min(want, seg.size - rel)
            want -= len(data)
            offset = seg.base + rel + len(data)
            if len(data) < asked:
                break  # the file changed under us: stop here, the next read goes on
        return b"".join(out)

    def time_at(self, offset: int) -> float | None:
        """When the byte at ``offset`` arrived (None if unknown)."""
        for seg in reversed(self.segments):
            if offset >= seg.base or seg is self.segments[0]:
                if not seg.indexed:
                    return seg.mtime
                i = bisect.bisect_right(seg.offsets, offset - seg.base) - 1
                return seg.times[i] if i >= 0 else None
        return None

    def lines(self, offset: int, budget: int, final: bool, first: bool = True
              ) -> tuple[list[tuple[int, float | None, str]], int, bool]:
        """Whole lines from ``offset`` costing at most ``budget`` (see :func:`line_cost`):
        ``([(offset, time, text)], next offset, more)``; ``more`` when the budget ended it.
        A last line without its newline is only returned when ``final`` (the task ended).
        ``first``: nothing was returned yet, so one line may exceed the budget."""
        offset = min(max(offset, self.start), self.end)
        data = self.read(offset, max(budget, MAX_LINE_BYTES + 1))
        out: list[tuple[int, float | None, str]] = []
        pos, used, more = 0, 0, False
        reached_end = offset + len(data) >= self.end
        while pos < len(data):
            nl = data.find(b"\n", pos, pos + MAX_LINE_BYTES + 1)
            if nl >= 0:
                raw, after = data[pos:nl], nl + 1
            elif len(data) - pos >= MAX_LINE_BYTES:
                raw, after = data[pos:pos + MAX_LINE_BYTES], pos + MAX_LINE_BYTES
            elif reached_end and final:
                raw, after = data[pos:], len(data)
            else:
                more = not reached_end
                break
            text = raw.decode("utf-8", "replace").rstrip("\r")
            cost = line_cost(text)
            if used + cost > budget and (out or not first):
                more = True
                break
            out.append((offset + pos, self.time_at(offset + pos), text))
            used += cost
            pos = after
        return out, offset + pos, more

    def tail(self, n: int, final: bool) -> tuple[list[tuple[int, float | None]], int]:
        """Starts (and times) of the last ``n`` lines, oldest first, and the offset just after
        the last whole line (after everything when ``final``)."""
        end, pos, newlines = self.end, self.end, []
        while pos > self.start and len(newlines) <= n + 1 and end - pos < TAIL_SCAN_MAX:
            size = min(TAIL_BLOCK, pos - self.start)
            pos -= size
            block = self.read(pos, size)
            i = len(block)
            while (i := block.rfind(b"\n", 0, i)) >= 0:
                newlines.append(pos + i)
        complete_end = newlines[0] + 1 if newlines else self.start
        starts: list[int] = []
        if final and complete_end < end:
            starts.append(complete_end)
        starts += [p + 1 for p in newlines[1:]]
        if pos <= self.start and newlines:
            starts.append(self.start)
        starts = starts[:n] if n > 0 else []
        return [(s, self.time_at(s)) for s in reversed(starts)], (end if final else complete_end)


LINE_OVERHEAD = 16
"""Bytes a line costs on the wire beyond its UTF-8 text (array header, time, string header)."""


def line_cost(text: str) -> int:
    return len(text.encode("utf-8", "replace")) + LINE_OVERHEAD
