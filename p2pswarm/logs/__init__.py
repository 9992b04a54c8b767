"""`service logs` across the cluster: the node-to-node protocol (wire kinds 48-55) and its service."""
