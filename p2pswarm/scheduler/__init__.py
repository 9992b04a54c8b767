"""The leader's scheduler: min-cost-flow placement, the reconciler and rolling updates (all pure)."""
