"""The ports a node listens on beside its gossip port, as offsets from it (or from the relay port).

One place for the layout, because the join endpoint, the mesh, DNS, the API's check of published ports
and the test helpers all depend on it: a node at gossip port P holds P (gossip), P + 1 (join, secure
clusters), P + 2 (mesh relay, TCP and UDP, unless taken: the port in use is gossiped), P + 3 (TLS relay:
the relay port + 1, secure clusters) and P + 4 (DNS, when port 53 cannot be had).
"""

JOIN_PORT_OFFSET = 1
"""The join endpoint listens on the gossip port + 1."""
RELAY_PORT_OFFSET = 2
"""The mesh relay's usual port: the gossip port + 2 (another port when that one is taken)."""
TLS_RELAY_OFFSET = 1
"""A node's TLS relay listener (encrypted forwarding) is on its relay port + 1."""
DNS_FALLBACK_OFFSET = 4
"""The DNS fallback port: the gossip port + 4, when port 53 cannot be had."""
NODE_PORT_SPAN = 5
"""The gossip port and the four above it: what a node may hold of its own."""
