"""The node's event history file: what `events --since` reads after a restart, and what it forgets."""

from __future__ import annotations

from p2pswarm.events.derive import make
from p2pswarm.events.store import EventLog


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def service_event(action: str, at: float, index: int):
    return make("service", action, "web", at, index, version=index)


def test_history_survives_a_restart_and_replayed_entries_are_not_stored_twice(tmp_path):
    clock = Clock()
    log = EventLog(tmp_path / "events.log", clock=clock)
    log.add([service_event("create", 990.0, 5)], 5)
    log.add([], 6)  # an entry without events still counts as seen
    log.add([make("node", "suspect", "n2", 995.0, local=True)])
    log.close()
    again = EventLog(tmp_path / "events.log", clock=clock)
    assert [(e["action"], e["seq"]) for e in again.query(since=0)[0]] == [("create", 1), ("suspect", 2)]
    assert not again.fresh(5) and again.fresh(6)  # the file knows index 5; 6 had nothing to store
    stored = again.add([service_event("scale", 996.0, 7)], 7)
    assert stored[0][0] == 3  # sequence numbers go on from the previous life


def test_query_by_time_type_and_cursor(tmp_path):
    log = EventLog(tmp_path / "events.log", clock=Clock())
    for i in range(1, 6):
        log.add([service_event(f"a{i}", 900.0 + i, i), make("task", "running", f"t{i}", 900.0 + i, i)], i)
    found, cursor, more = log.query(since=902.0, until=904.0, types=["service"])
    assert [e["action"] for e in found] == ["a2", "a3", "a4"] and not more and cursor == 10
    page, cursor, more = log.query(limit=3)
    assert [e["seq"] for e in page] == [1, 2, 3] and more
    rest, cursor, more = log.query(after=cursor)
    assert [e["seq"] for e in rest] == [4, 5, 6, 7, 8, 9, 10] and not more
    assert log.query(after=cursor) == ([], 10, False)


def test_retention_by_count_and_age_and_the_file_stays_bounded(tmp_path):
    clock = Clock(10_000.0)
    path = tmp_path / "events.log"
    log = EventLog(path, clock=clock, max_events=10, max_age=100.0)
    for i in range(1, 41):
        log.add([service_event("update", 9_950.0 + i, i)], i)
    assert [e.index for _, e in log.events] == list(range(31, 41))
    assert len(path.read_text().splitlines()) <= 16  # rewritten at 15 lines: a header and the kept events
    clock.now = 10_100.0  # events before 10,000 are older than max_age
    log.add([make("node", "dead", "n3", 10_100.0, local=True)])
    assert [e.index for _, e in log.events] == [0]
    log.close()
    reopened = EventLog(path, clock=clock, max_events=10, max_age=100.0)
    assert not reopened.fresh(40) and reopened.seq == 41  # the watermark outlives the aged-out events


def test_a_damaged_line_is_skipped_not_fatal(tmp_path):
    path = tmp_path / "events.log"
    log = EventLog(path, clock=Clock())
    log.add([service_event("create", 990.0, 1)], 1)
    log.close()
    with open(path, "a") as f:
        f.write('{"seq": 2, "type": "nonsense"\n{"seq": "x"}\n')
    reopened = EventLog(path, clock=Clock())
    assert [e["action"] for e in reopened.query(since=0)[0]] == ["create"]
