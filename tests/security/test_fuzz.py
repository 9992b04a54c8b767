"""A small run of simulations/fuzz_security.py (the script runs the full million).

Only WireError may leave wire.decode, the sponsor never raises, the joiner raises
only JoinError and accepts only sound grants; hostile oversized containers leave the
process's memory where it was.  The run must also reach the deep
paths (grants issued, grants accepted, certificates refused), or it proves little.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)

SCRIPT = Path(__file__).resolve().parents[2] / "simulations" / "fuzz_security.py"


def load():
    spec = importlib.util.spec_from_file_location("fuzz_security", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_twenty_thousand_inputs_raise_only_defined_errors():
    fuzz = load()
    result = fuzz.fuzz(20_000, seed=11)
    assert result["unexpected"] == 0, result["unexpected_examples"][:3]
    assert result["by_family"]["oversized"] > 1_000  # hostile containers were decoded (and refused)
    assert result["rss_growth_mb"] <= fuzz.RSS_GROWTH_LIMIT_MB
    out = result["outcomes"]
    assert out["wire_error"] > 5_000 and out["decoded"] > 1_000
    assert out["sponsor_JoinGrant"] > 50 and out["joiner_accepted"] > 10
    for code in ("bad_token", "clock_skew", "key_mismatch", "other_cluster", "version"):
        assert out[f"sponsor_{code}"] > 0, code
    for code in ("bad_grant", "bad_reply", "ca_mismatch"):
        assert out[f"joiner_{code}"] > 0, code
