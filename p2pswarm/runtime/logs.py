"""Size-rotated task logs, fed from the task's stdout/stderr pipes on the node's loop.

Why pipes and not "the child writes to a file, we copy-truncate": the node sees every
byte, so rotation is exact (no bytes lost between copy and truncate, no polling of file
sizes) and files never outgrow ``max_bytes``. Writes go to the page cache (no fsync), so
they do not stall the loop. If the node dies, the pipe breaks, but the task dies with it
anyway (PR_SET_PDEATHSIG).

Files: ``<name>.log`` (current), ``<name>.log.1`` (previous) ... ``<name>.log.<keep-1>``.
"""

from __future__ import annotations

import os
from pathlib import Path


class RotatingLog:
    def __init__(self, path: Path, max_bytes: int, keep: int) -> None:
        if max_bytes < 1 or keep < 1:
            raise ValueError("log max_bytes and keep must be at least 1")
        self.path, self.max_bytes, self.keep = path, max_bytes, keep
        self._file = open(path, "ab")
        self._size = self._file.tell()

    def write(self, data: bytes) -> None:
        """Append ``data``; rotate before a file would exceed ``max_bytes``, at the last
        newline that still fits when there is one (lines stay whole where possible)."""
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
        self._file.write(data)
        self._size += len(data)

    def _rotate(self) -> None:
        self._file.close()
        for i in range(self.keep - 1, 0, -1):
            older = rotated(self.path, i - 1)
            if older.exists():
                os.replace(older, rotated(self.path, i))
        if self.keep == 1:
            self.path.unlink(missing_ok=True)
        self._file = open(self.path, "ab")
        self._size = 0

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def rotated(path: Path, i: int) -> Path:
    return path if i == 0 else path.with_name(f"{path.name}.{i}")


def log_files(path: Path, keep: int) -> list[Path]:
    """Existing files of one log, oldest first."""
    return [p for p in (rotated(path, i) for i in range(keep - 1, -1, -1)) if p.exists()]

