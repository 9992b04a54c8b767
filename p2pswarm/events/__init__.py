"""``p2pswarm events``: what happened in the cluster (derived from the Raft log) and on this node."""
