from ..apps.support import pids  # noqa: F401  (a fixture)
