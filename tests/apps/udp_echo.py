"""A tiny UDP task for tests: answers each datagram with its node name, a space and the datagram.

Listens on $PORT at $P2PSWARM_HOST (the node's address); exits 0 on SIGTERM.
"""

import os
import signal
import socket
import sys

signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind((os.environ.get("P2PSWARM_HOST", "127.0.0.1"), int(os.environ["PORT"])))
node = os.environ.get("P2PSWARM_NODE", "?").encode()
while True:
    data, client = sock.recvfrom(65535)
    sock.sendto(node + b" " + data, client)
