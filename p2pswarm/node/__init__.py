"""The node: the daemon loop over components, its data dir and the replicated state machine it applies."""
