"""Every preset detects a crash: the probe schedule must let each probe reach its verdict."""

import pytest

from p2pswarm.node.presets import PRESETS, preset

from .swimnet import SwimNet


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_a_crashed_member_is_declared_dead_under_every_preset(name):
    config = preset(name).membership
    net = SwimNet(seed=1, config=config)
    net.cluster("abcde")
    net.run(5 * config.probe_interval)
    net.crash("c")
    # detection within a few probe periods plus the longest suspicion timeout
    net.run(10 * config.probe_interval + config.suspicion_bounds(5)[1])
    assert {n: net.cores[n].member("c").status for n in "abde"} == dict.fromkeys("abde", "dead")
