"""Golden transcript files for the protocol cores' tests (Raft's and SWIM's).

A transcript is a script of commands, a line ``----``, then what running the script printed.
``REGENERATE=1`` rewrites the expectations from the code (review the diff before keeping it).
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Callable

SEPARATOR = "----\n"


def check(path: Path, run_script: Callable[[list[str]], list[str]]) -> None:
    """Run the script of ``path`` (blank and ``#`` lines skipped) and compare with its expectations."""
    script, _, expected = path.read_text().partition(SEPARATOR)
    got = run_script([line for line in script.splitlines() if line.strip() and not line.startswith("#")])
    if os.environ.get("REGENERATE"):
        path.write_text(script + SEPARATOR + "\n".join(got) + "\n")
        return
    want = expected.rstrip("\n").split("\n")
    if got != want:
        diff = "\n".join(difflib.unified_diff(want, got, "expected", "got", lineterm=""))
        raise AssertionError(f"{path.name} differs from its transcript:\n{diff}")
