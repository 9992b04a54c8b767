"""The data-plane process and the node's handle on it (p2pswarm.mesh.dataplane / control)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from p2pswarm.mesh.control import DataPlane, FrameDecoder, FrameError, encode_frame
from p2pswarm.testing.localcluster import free_port

from .meshtest import arun

ROOT = Path(__file__).resolve().parents[2]
HOST_A = "127.0.8.1"
HOST_B = "127.0.8.2"
BACK = "127.0.8.11"


def pid_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def wait_gone(pid: int, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pid_gone(pid):
            return True
        time.sleep(0.02)
    return False


async def echo_server(host: str) -> tuple[asyncio.Server, int]:
    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"hi\n")
        while data := await r.read(65536):
            w.write(data)
        w.close()
    server = await asyncio.start_server(handle, host, 0)
    return server, server.sockets[0].getsockname()[1]


def table(host: str, ports: dict[int, str], version: int = 1, **extra: Any) -> dict:
    return {"version": version, "host": host, "relay_port": 0, "relay_allow": [], "blocked_hosts": [],
            "ports": [{"port": p, "service": "web", "proxy_protocol": False,
                       "backends": [{"task": "t1", "node": "n1", "addr": addr, "local": True, "rtt": None,
                                     "via": None}]} for p, addr in ports.items()],
            "limits": {"max_conns": 100, "connect_timeout": 1.0, "retries": 2, "idle_timeout": 60.0,
                       "drain_grace": 1.0}, **extra}


async def roundtrip(host: str, port: int) -> bytes:
    r, w = await asyncio.open_connection(host, port)
    line = await r.readline()
    w.write(b"ping")
    got = await r.readexactly(4)
    w.close()
    return line + got


def test_codec_roundtrip_and_limits() -> None:
    dec = FrameDecoder()
    stream = encode_frame({"a": 1}) + encode_frame({"table": {"ports": []}})
    assert dec.feed(stream[:3]) == []
    assert dec.feed(stream[3:]) == [{"a": 1}, {"table": {"ports": []}}]
    with pytest.raises(FrameError, match="exceeds"):
        FrameDecoder(max_frame=10).feed(encode_frame({"x": "y" * 20}))
    with pytest.raises(FrameError, match="expected a map"):
        FrameDecoder().feed(b"\x00\x00\x00\x01\x05")


def test_dataplane_forwards_reports_status_and_port_in_use() -> None:
    async def main() -> None:
        server, bport = await echo_server(BACK)
        taken = socket.socket()
        taken.bind((HOST_A, 0))
        taken.listen(1)
        busy = taken.getsockname()[1]
        good = free_port(HOST_A)
        dp = DataPlane(HOST_A)
        await dp.start()
        try:
            t = table(HOST_A, {good: f"{BACK}:{bport}", busy: f"{BACK}:{bport}"})
            del t["host"]  # DataPlane fills in its host
            dp.push(t)
            st = await dp.wait_status(lambda s: s.get("version") == 1)
            assert st["listening"] == [good]
            assert st["bind_errors"] == {str(busy): f"address in use: {HOST_A}:{busy}"}
            assert await roundtrip(HOST_A, good) == b"hi\nping"
            st = await dp.wait_status(lambda s: s["total"]["accepted"] == 1 and s["active"] == 0)
            assert st["ports"][str(good)]["bytes_out"] == 7 and st["loop"] in ("uvloop", "asyncio")
            pid = dp.pid
        finally:
            await dp.close()
            taken.close()
            server.close()
        assert pid is not None and wait_gone(pid)
    arun(main())


def test_relay_across_two_dataplane_processes() -> None:
    async def main() -> None:
        server, bport = await echo_server(BACK)
        relay_port, front_port = free_port(HOST_B), free_port(HOST_A)
        a, b = DataPlane(HOST_A), DataPlane(HOST_B)
        await a.start()
        await b.start()
        try:
            b.push(table(HOST_B, {}, relay_port=relay_port, relay_allow=[f"{BACK}:{bport}"], relay_from=[HOST_A]))
            t = table(HOST_A, {front_port: f"{BACK}:{bport}"}, blocked_hosts=[BACK])
            t["ports"][0]["backends"][0].update(local=False, via=f"{HOST_B}:{relay_port}")
            a.push(t)
            await b.wait_status(lambda s: s["relay"]["listening"])
            await a.wait_status(lambda s: s["listening"] == [front_port])
            assert await roundtrip(HOST_A, front_port) == b"hi\nping"
            await a.wait_status(lambda s: s["total"]["relayed_out"] == 1)
            await b.wait_status(lambda s: s["total"]["relayed_in"] == 1)
        finally:
            await a.close()
            await b.close()
            server.close()
    arun(main())


def test_dataplane_restarts_a_crashed_child_with_the_last_table() -> None:
    async def main() -> None:
        server, bport = await echo_server(BACK)
        port = free_port(HOST_A)
        dp = DataPlane(HOST_A, restart_delay=0.05)
        await dp.start()
        try:
            dp.push(table(HOST_A, {port: f"{BACK}:{bport}"}, version=7))
            await dp.wait_status(lambda s: s.get("version") == 7)
            first = dp.pid
            os.kill(first, signal.SIGKILL)
            await dp.wait_status(lambda s: s.get("pid") != first and s.get("version") == 7)
            assert dp.restarts == 1
            assert await roundtrip(HOST_A, port) == b"hi\nping"
        finally:
            await dp.close()
            server.close()
    arun(main())


def _spawn_raw() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "p2pswarm.mesh.dataplane"], cwd=ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_exits_when_stdin_closes() -> None:
    p = _spawn_raw()
    try:
        port = free_port(HOST_A)
        p.stdin.write(encode_frame({"table": table(HOST_A, {port: f"{BACK}:1"})}))
        p.stdin.flush()
        dec = FrameDecoder()
        frames: list = []
        while not frames:
            frames = dec.feed(os.read(p.stdout.fileno(), 65536))
        assert frames[0]["status"]["listening"] == [port]
        p.stdin.close()
        assert p.wait(30) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_a_bad_control_frame_is_one_line_and_exit() -> None:
    p = _spawn_raw()
    try:
        p.stdin.write(b"\xff\xff\xff\xff")
        p.stdin.flush()
        assert p.wait(30) == 2
        err = p.stderr.read().decode().strip()
        assert len(err.splitlines()) == 1 and "bad control frame" in err
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_no_orphan_when_the_node_is_killed() -> None:
    parent = textwrap.dedent(f"""
        import asyncio, sys
        sys.path.insert(0, {str(ROOT)!r})
        from p2pswarm.mesh.control import DataPlane
        async def main():
            dp = DataPlane("127.0.8.1")
            await dp.start()
            print(dp.pid, flush=True)
            await asyncio.sleep(60)
        asyncio.run(main())
    """)
    node = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True)
    try:
        child = int(node.stdout.readline())
        assert not pid_gone(child)
        node.send_signal(signal.SIGKILL)
        node.wait(30)
        assert wait_gone(child), "the data plane outlived its node"
    finally:
        if node.poll() is None:
            node.kill()
            node.wait()
