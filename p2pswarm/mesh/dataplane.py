"""The data-plane process: ``python -m p2pswarm.mesh.dataplane [--loop L] [--splice-after N]``.

Started by the node (:class:`p2pswarm.mesh.control.DataPlane`), it reads control frames on
stdin (``{"table": ...}``, ``{"stop": true}``) and writes ``{"status": ...}`` frames on
stdout after each table and every :data:`~p2pswarm.mesh.control.STATUS_INTERVAL` seconds.
It exits as soon as stdin closes, and asks the kernel for SIGKILL when its parent dies, so
it never outlives the node. Anything printed by mistake goes to stderr: the frames use a
private copy of the original stdout.

``--loop auto`` (default) uses uvloop when it is installed (measured fastest, see
docs/benchmarks.md, "Routing mesh"), else asyncio's default loop.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import resource
import signal
import sys
from typing import Any

from p2pswarm.mesh.conn import SPLICE_AFTER
from p2pswarm.mesh.control import STATUS_INTERVAL, FrameDecoder, FrameError, encode_frame
from p2pswarm.mesh.proxy import Mesh
from p2pswarm.mesh.udp import UdpMesh

log = logging.getLogger("p2pswarm.mesh.dataplane")

MAX_STATUS_BACKLOG = 1 << 20
"""Bytes of unread status frames kept for a node that is not reading; newer ones are dropped."""


def _die_with_parent() -> None:
    try:
        from p2pswarm.runtime import procfs
    except ImportError:
        return
    if procfs._prctl is not None:
        procfs._prctl(procfs.PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError):
            pass


class _Control(asyncio.Protocol):
    def __init__(self, serve: "_Server") -> None:
        self.serve = serve
        self.decoder = FrameDecoder()

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.decoder.feed(data)
        except FrameError as e:
            print(f"p2pswarm data plane: bad control frame ({e}); exiting", file=sys.stderr)
            self.serve.finish(2)
            return
        for frame in frames:
            self.serve.on_frame(frame)

    def eof_received(self) -> bool:
        self.serve.finish(0)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.serve.finish(0)


class _Server:
    def __init__(self, loop: asyncio.AbstractEventLoop, mesh: Mesh, out: Any, loop_name: str,
                 udp: UdpMesh | None = None) -> None:
        self.loop = loop
        self.mesh = mesh
        self.udp = udp
        self.out = out
        self.loop_name = loop_name
        self.done: asyncio.Future[int] = loop.create_future()
        self.next_table: Any = None
        self.applying = False

    def on_frame(self, frame: dict[str, Any]) -> None:
        if frame.get("stop"):
            self.finish(0)
        elif "table" in frame:
            self.next_table = frame["table"]
            if not self.applying:
                self.applying = True
                self.loop.create_task(self._apply())

    async def _apply(self) -> None:
        try:
            while self.next_table is not None:
                table, self.next_table = self.next_table, None
                await self.mesh.apply(table)
                if self.udp is not None:
                    await self.udp.apply(table)
                self.send_status()
        finally:
            self.applying = False

    def send_status(self) -> None:
        if self.out.is_closing() or self.out.get_write_buffer_size() > MAX_STATUS_BACKLOG:
            return
        status = self.mesh.status()
        status["loop"] = self.loop_name
        if self.udp is not None:
            udp = status["udp"] = self.udp.status()
            status["bind_errors"] = {**status.get("bind_errors", {}),
                                     **{f"{p}/udp": e for p, e in udp["bind_errors"].items()}}
        self.out.write(encode_frame({"status": status}))

    async def ticker(self) -> None:
        while True:
            await asyncio.sleep(STATUS_INTERVAL)
            self.send_status()

    def finish(self, code: int) -> None:
        if not self.done.done():
            self.done.set_result(code)


async def serve(in_fd: int, out_fd: int, splice_after: int, loop_name: str) -> int:
    loop = asyncio.get_running_loop()
    mesh = Mesh(loop, splice_after=splice_after)
    udp = UdpMesh(loop)
    out, _ = await loop.connect_write_pipe(asyncio.Protocol, os.fdopen(out_fd, "wb", buffering=0))
    server = _Server(loop, mesh, out, loop_name, udp)
    await loop.connect_read_pipe(lambda: _Control(server), os.fdopen(in_fd, "rb", buffering=0))
    ticker = loop.create_task(server.ticker())
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, server.finish, 0)
    code = await server.done
    ticker.cancel()
    await mesh.close()
    await udp.close()
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m p2pswarm.mesh.dataplane",
                                     description="The routing mesh's data plane (started by the node).")
    parser.add_argument("--loop", choices=("auto", "uvloop", "asyncio"), default="auto")
    parser.add_argument("--splice-after", type=int, default=SPLICE_AFTER,
                        help="reads of >= 64 KiB after which a connection switches to os.splice "
                             "(0: right after connecting, -1: never)")
    args = parser.parse_args(argv)
    _die_with_parent()
    _raise_fd_limit()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    out_fd = os.dup(1)
    os.dup2(2, 1)  # a stray print() must not corrupt the frame stream
    loop_name = "asyncio"
    if args.loop in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if args.loop == "uvloop":
                print("p2pswarm data plane: uvloop is not installed (pip install uvloop)", file=sys.stderr)
                return 2
        else:
            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
            loop_name = "uvloop"
    code = asyncio.run(serve(0, out_fd, args.splice_after, loop_name))
    sys.stdout.flush()
    os._exit(code)  # exit at once: no lingering executor threads or transports


if __name__ == "__main__":
    sys.exit(main())
