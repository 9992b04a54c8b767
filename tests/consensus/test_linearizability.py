"""The linearizability checker on known-good and known-bad histories."""

from p2pswarm.sim.linearizability import Op, check_history, check_single


def op(p, t0, t1, kind, *args, result=None):
    return Op(p, t0, t1, kind, args, result)


def test_sequential_history_is_linearizable():
    h = [op(1, 0, 1, "put", "x", 1, result=True), op(1, 2, 3, "get", "x", result=1),
         op(1, 4, 5, "cas", "x", 1, 2, result=True), op(1, 6, 7, "delete", "x", result=True),
         op(1, 8, 9, "get", "x", result=None)]
    assert check_history(h).ok


def test_stale_read_after_completed_write_is_caught():
    h = [op(1, 0, 1, "put", "x", 1, result=True), op(2, 2, 3, "get", "x", result=None)]
    res = check_history(h)
    assert not res.ok and res.key == "x"


def test_concurrent_ops_may_take_either_order():
    h = [op(1, 0, 10, "put", "x", 1, result=True), op(2, 1, 2, "get", "x", result=1),
         op(3, 3, 4, "get", "x", result=1)]
    assert check_history(h).ok


def test_reads_cannot_go_back_in_time():
    h = [op(1, 0, 10, "put", "x", 1, result=True), op(2, 1, 2, "get", "x", result=1),
         op(3, 3, 4, "get", "x", result=None)]
    assert not check_history(h).ok


def test_unknown_write_may_or_may_not_take_effect():
    lost = op(1, 0, None, "put", "x", 1)
    assert check_history([lost, op(2, 5, 6, "get", "x", result=None)]).ok
    assert check_history([lost, op(2, 5, 6, "get", "x", result=1)]).ok
    assert not check_history([lost, op(2, 5, 6, "get", "x", result=2)]).ok


def test_unknown_write_cannot_take_effect_before_it_was_invoked():
    h = [op(2, 0, 1, "get", "x", result=1), op(1, 5, None, "put", "x", 1)]
    assert not check_history(h).ok


def test_cas_results_are_checked():
    h = [op(1, 0, 1, "put", "x", 1, result=True), op(2, 2, 3, "cas", "x", 1, 2, result=True),
         op(3, 4, 5, "cas", "x", 1, 3, result=True)]
    assert not check_history(h).ok


def test_lost_acknowledged_write_is_caught():
    h = [op(1, 0, 1, "put", "x", 1, result=True), op(1, 2, 3, "put", "x", 2, result=True),
         op(2, 4, 5, "get", "x", result=1)]
    assert not check_history(h).ok


def test_keys_are_independent():
    h = [op(1, 0, 1, "put", "x", 1, result=True), op(1, 2, 3, "put", "y", 2, result=True),
         op(2, 4, 5, "get", "y", result=2), op(2, 6, 7, "get", "x", result=1)]
    assert check_history(h).ok


def test_many_concurrent_writers_stay_tractable():
    h = [op(p, 0, 100, "put", "x", p, result=True) for p in range(14)]
    h.append(op(99, 101, 102, "get", "x", result=13))
    assert check_single(h) is True
    h[-1] = op(99, 101, 102, "get", "x", result=77)
    assert check_single(h) is False


def test_budget_exhaustion_is_reported_not_guessed():
    h = [op(p, 0, 100, "put", "x", p, result=True) for p in range(16)]
    h.append(op(99, 101, 102, "get", "x", result=77))
    assert check_single(h, max_states=50) is None
