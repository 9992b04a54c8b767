"""The replicated cluster state: service specs, commands, and the deterministic state machine."""
