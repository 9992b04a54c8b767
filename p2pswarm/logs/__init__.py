"""`service logs` across the cluster: the node-to-node protocol (kinds: :data:`p2pswarm.wire.KINDS`) and its service."""
