import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "apps"))

from support import pids  # noqa: E402,F401  (a fixture)
