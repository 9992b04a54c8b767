"""Service discovery by DNS: names from gossip and the applied state (zone, core: pure), listeners, the host."""
