"""The Raft log as the core sees it: a snapshot base plus the entries after it.

The whole uncompacted log stays in memory (snapshots keep it short), which lets
the core stay free of storage I/O.  Three cursors track the Ready/Advance
hand-off: ``stabled`` (entries handed out for persistence), ``committed`` and
``applied`` (entries handed out for applying).  Pure: no I/O.
"""

from __future__ import annotations

from p2pswarm.consensus.messages import Entry, Snapshot


class LogError(AssertionError):
    """A Raft invariant would be broken (a bug in the core or a lying peer that must not win)."""


class RaftLog:
    def __init__(self, snapshot: Snapshot | None = None, entries: tuple = (), commit: int = 0) -> None:
        self.snap_index = snapshot.index if snapshot else 0
        self.snap_term = snapshot.term if snapshot else 0
        self.entries: list[Entry] = []
        for e in entries:
            if e.index <= self.snap_index:
                continue
            if e.index != self.snap_index + 1 + len(self.entries):
                raise LogError(f"stored log has a gap at index {e.index}")
            self.entries.append(e)
        self.stabled = self.last_index()
        self.committed = max(self.snap_index, min(commit, self.last_index()))
        self.applied = self.snap_index

    # ---------------------------------------------------------- queries

    def last_index(self) -> int:
        return self.snap_index + len(self.entries)

    def last_term(self) -> int:
        return self.entries[-1].term if self.entries else self.snap_term

    def term(self, index: int) -> int | None:
        """Term of the entry at ``index``; None when compacted away or beyond the end."""
        if index == self.snap_index:
            return self.snap_term
        if index < self.snap_index or index > self.last_index():
            return None
        return self.entries[index - self.snap_index - 1].term

    def entry(self, index: int) -> Entry:
        return self.entries[index - self.snap_index - 1]

    def match_term(self, index: int, term: int) -> bool:
        return self.term(index) == term

    def up_to_date(self, last_index: int, last_term: int) -> bool:
        """Is a candidate's log at least as up to date as ours (Raft §5.4.1)?"""
        return (last_term, last_index) >= (self.last_term(), self.last_index())

    def slice(self, lo: int, max_entries: int, max_bytes: int) -> tuple:
        """Entries from ``lo`` on, at most max_entries and max_bytes (but at least one)."""
        start = lo - self.snap_index - 1
        out: list[Entry] = []
        size = 0
        for e in self.entries[start:start + max_entries]:
            size += len(e.data)
            if out and size > max_bytes:
                break
            out.append(e)
        return tuple(out)

    def between(self, lo: int, hi: int) -> tuple:
        """Entries with lo <= index <= hi."""
        base = self.snap_index + 1
        return tuple(self.entries[max(lo, base) - base:hi - base + 1])

    def conflict_hint(self, index: int, term: int) -> tuple[int, int]:
        """The largest index <= ``index`` whose term is <= ``term``, and its term.

        A follower answers a refused append with it: every entry after it surely
        differs from the leader's, so the leader can skip them all at once.
        """
        index = min(index, self.last_index())
        while index > self.snap_index and self.entry(index).term > term:  # (in the log: never None)
            index -= 1
        return index, self.term(index) or 0

    # ---------------------------------------------------------- changes

    def append(self, entries: tuple) -> None:
        """Append entries that may overwrite an uncommitted suffix."""
        if not entries:
            return
        first = entries[0].index
        if first <= self.committed:
            raise LogError(f"overwriting committed index {first} (commit {self.committed})")
        if first > self.last_index() + 1:
            raise LogError(f"gap: appending {first} after {self.last_index()}")
        del self.entries[first - self.snap_index - 1:]
        self.entries.extend(entries)
        self.stabled = min(self.stabled, first - 1)

    def maybe_append(self, prev_index: int, prev_term: int, entries: tuple) -> int | None:
        """AppendEntries consistency check; returns the last index that now matches, or None."""
        if not self.match_term(prev_index, prev_term):
            return None
        for k, e in enumerate(entries):
            if self.term(e.index) != e.term:
                self.append(entries[k:])
                break
        return prev_index + len(entries)

    def commit_to(self, index: int) -> bool:
        if index > self.committed:
            if index > self.last_index():
                raise LogError(f"commit {index} beyond last index {self.last_index()}")
            self.committed = index
            return True
        return False

    def restore(self, snapshot: Snapshot) -> None:
        """Replace the whole log by a snapshot received from the leader."""
        self.snap_index, self.snap_term = snapshot.index, snapshot.term
        self.entries = []
        self.committed = self.applied = self.stabled = snapshot.index

    def compact(self, index: int, term: int) -> None:
        """Drop entries up to ``index`` (already in a snapshot)."""
        if index <= self.snap_index:
            return
        del self.entries[:index - self.snap_index]
        self.snap_index, self.snap_term = index, term

    def unstable(self) -> tuple:
        return self.between(self.stabled + 1, self.last_index())

    def to_apply(self) -> tuple:
        return self.between(self.applied + 1, self.committed)
