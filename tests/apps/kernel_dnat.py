"""Run inside a private network namespace (tests/mesh/test_nft.py): the mesh's nft tables forward for real.

Installs a planned table for node address 127.0.5.5 in this namespace, with TCP 8080 -> two "remote"
replicas (127.0.9.9:40001, 127.0.9.10:40002) and UDP 5353 -> 127.0.9.9:40005, talks through it, then
drops one replica (resetting its flows), then removes the table. Prints one JSON map of what it saw.
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
from collections import Counter

from p2pswarm.mesh import nft
from p2pswarm.mesh.kernel_plan import dropped, plan, transaction

NODE = "127.0.5.5"
TABLE = "p2pswarm_mesh_127_0_5_5_7946"
A, B = ("127.0.9.9", 40001), ("127.0.9.10", 40002)


def serve_tcp(addr: tuple[str, int]) -> None:
    server = socket.create_server(addr)

    def accept() -> None:
        while True:
            conn, _ = server.accept()
            threading.Thread(target=echo, args=(conn,), daemon=True).start()

    def echo(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(100):  # every line back with the replica's port
                conn.sendall(f"{addr[1]} {data.decode().strip()}\n".encode())
    threading.Thread(target=accept, daemon=True).start()


def serve_udp(addr: tuple[str, int]) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(addr)

    def loop() -> None:
        while True:
            data, peer = sock.recvfrom(100)
            sock.sendto(f"{addr[1]} {peer[0]}".encode(), peer)
    threading.Thread(target=loop, daemon=True).start()


def ask(conn: socket.socket, text: str) -> str:
    conn.sendall(text.encode() + b"\n")
    return conn.recv(100).decode().strip()


def table(*replicas: tuple[str, int]) -> dict:
    return {"host": NODE, "ports": [{"port": 8080, "backends": [{"addr": f"{h}:{p}"} for h, p in replicas]}],
            "udp": [{"port": 5353, "backends": [{"addr": "127.0.9.9:40005"}]}]}


def main() -> None:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    out: dict = {"probe": nft.probe()}
    for addr in (A, B):
        serve_tcp(addr)
    serve_udp(("127.0.9.9", 40005))
    both = plan(table(A, B))
    nft.run(transaction(None, both, TABLE))
    nft.run(transaction(None, both, TABLE))  # a restart's full install replaces, never duplicates
    out["rules"] = subprocess.run(["nft", "list", "table", "inet", TABLE], capture_output=True,
                                  text=True).stdout.count("dport vmap")
    seen: Counter = Counter()
    for _ in range(60):
        with socket.create_connection((NODE, 8080), timeout=2) as conn:
            seen[ask(conn, "hi").split()[0]] += 1
    out["tcp_spread"] = dict(seen)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.settimeout(2)
    udp.bind(("127.0.0.77", 0))
    udp.sendto(b"x", (NODE, 5353))
    answer, source = udp.recvfrom(100)
    out["udp"] = [answer.decode(), list(source)]  # the replica sees the client's address; the reply comes from NODE
    # one open connection per replica, then replica B leaves the table (its node is gone)
    held = {}
    while len(held) < 2:
        conn = socket.create_connection((NODE, 8080), timeout=2)
        port = ask(conn, "open").split()[0]
        if port in held:
            conn.close()
        else:
            held[port] = conn
    only_a = plan(table(A))
    out["change"] = transaction(both, only_a, TABLE)
    nft.run(out["change"])
    out["reset_entries"] = nft.reset_flows(NODE, dropped(both, only_a, [("tcp", 8080, "127.0.9.9:40001")]))
    out["after"] = {}
    for port, conn in held.items():
        try:
            out["after"][port] = ask(conn, "again") or "closed"
        except OSError as exc:
            out["after"][port] = type(exc).__name__
        conn.close()
    new = Counter()
    for _ in range(20):
        with socket.create_connection((NODE, 8080), timeout=2) as conn:
            new[ask(conn, "hi").split()[0]] += 1
    out["new_after"] = dict(new)
    nft.remove(TABLE)
    nft.remove(TABLE)  # absent: no error
    out["exists_after_remove"] = nft.exists(TABLE)
    try:
        socket.create_connection((NODE, 8080), timeout=2).close()
        out["after_remove"] = "connected"
    except OSError as exc:
        out["after_remove"] = type(exc).__name__
    print(json.dumps(out))


if __name__ == "__main__":
    main()
