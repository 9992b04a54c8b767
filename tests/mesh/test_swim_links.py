"""SWIM tells the mesh which members it reaches only through helpers (a cut direct link)."""

import pytest

from ..membership.swimnet import SwimNet


@pytest.mark.parametrize("seed", [1, 2])
def test_cut_link_is_reported_unreachable_and_forgotten_once_healed(seed):
    net = SwimNet(seed=seed)
    net.cluster("abcde")
    net.run(1.0)
    assert all(net.cores[n].unreachable() == () for n in "abcde")
    net.block("a", "b")
    net.run(8.0)
    assert net.cores["a"].unreachable() == ("b",)
    assert net.cores["b"].unreachable() == ("a",)
    assert net.cores["c"].unreachable() == ()
    assert net.cores["a"].member("b").status == "alive"  # reachable through helpers: not suspected
    net.unblock("a", "b")
    net.run(8.0)
    assert net.cores["a"].unreachable() == () and net.cores["b"].unreachable() == ()
