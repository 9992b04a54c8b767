"""The node's side of the data plane: spawn it, feed it tables, read its status.

The data plane (:mod:`p2pswarm.mesh.dataplane`) is a child process so that heavy traffic
never delays the node's event loop (SWIM probe acks). They talk over the child's stdin and
stdout in frames: a 4-byte big-endian length, then one msgpack map.

Node → data plane: ``{"table": TABLE}`` (full replacement) and ``{"stop": True}``.
Data plane → node: ``{"status": STATUS}`` after each table and every ``STATUS_INTERVAL``.
The data plane exits when its stdin closes and gets SIGKILL when the node dies
(``PR_SET_PDEATHSIG``), so it never outlives the node.

Usage from the node's event loop::

    dp = DataPlane("127.0.0.11")
    await dp.start()
    dp.push(table)              # any time; the newest table wins
    dp.latest_status()          # the last status frame's map, or None
    await dp.close()

If the child dies (crash, OOM) it is started again after ``restart_delay`` (doubling up to
``MAX_RESTART_DELAY``) and given the last table.

STATUS (a map; counters are ints)::

    {"version": 12,                  # the table version in force (None before the first)
     "pid": 4242, "loop": "uvloop", "host": "127.0.0.11",
     "listening": [8080],            # published ports bound now
     "bind_errors": {"8081": "address in use: 127.0.0.11:8081"},   # retried every ~2 s
     "relay": {"port": 7947, "listening": True, "error": None, **COUNTERS},
     "ports": {"8080": {**COUNTERS, "service": "web", "backends": 2, "listening": True}},
     "total": COUNTERS,              # ports + relay + ports removed since start
     "active": 17,                   # open connections (all ports and the relay)
     "backends": {"t1": 9, "t2": 8}, # open connections per backend task
     "table_error": None,            # one line when the last table was refused (old one kept)
     "tables_applied": 3,
     "udp": {"listening": [5353], "bind_errors": {}, "ports": {"5353": {**UDP_COUNTERS, "service": "dns",
             "backends": 2, "listening": True}}, "total": UDP_COUNTERS, "table_error": None,
             "idle_timeout": 30.0, "max_sessions": 4096}}

A UDP port that cannot be bound also appears in the top-level ``bind_errors``, keyed
``"5353/udp"`` (TCP ports are keyed by the bare number).

COUNTERS: accepted, active, refused_limit, connect_failed, no_backend, retried, relayed_out,
relayed_in, relay_refused, bytes_in (client → backend), bytes_out, errors, spliced.
UDP_COUNTERS (:data:`p2pswarm.mesh.udp.COUNTERS`): datagrams_in, datagrams_out, bytes_in, bytes_out,
sessions (gauge), sessions_started, expired, evicted, switched, backend_errors, no_backend, dropped, errors.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import sys
from typing import Any, Callable, Mapping

import msgpack

from p2pswarm.runtime.procfs import die_with_parent_hook

log = logging.getLogger(__name__)

MAX_FRAME = 16 * 1024 * 1024
"""Largest frame either side accepts (a table of thousands of backends is well below)."""
STATUS_INTERVAL = 1.0
"""Seconds between the data plane's unsolicited status frames."""
MAX_RESTART_DELAY = 5.0

_LEN = struct.Struct(">I")


class FrameError(ValueError):
    """A frame that is too long or not a msgpack map."""


def encode_frame(obj: Mapping[str, Any]) -> bytes:
    body = msgpack.packb(obj, use_bin_type=True)
    if len(body) > MAX_FRAME:
        raise FrameError(f"frame of {len(body)} bytes exceeds {MAX_FRAME}")
    return _LEN.pack(len(body)) + body


class FrameDecoder:
    """Incremental decoder: ``feed(bytes)`` returns the complete frames (dicts) so far."""

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._buf = bytearray()
        self._max = max_frame

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        self._buf += data
        out = []
        buf = self._buf
        while len(buf) >= 4:
            n = _LEN.unpack_from(buf)[0]
            if n > self._max:
                raise FrameError(f"frame of {n} bytes exceeds {self._max}")
            if len(buf) < 4 + n:
                break
            body = bytes(buf[4:4 + n])
            del buf[:4 + n]
            try:
                obj = msgpack.unpackb(body, raw=False, strict_map_key=False)
            except Exception as e:  # msgpack raises several types
                raise FrameError(f"frame is not msgpack: {e}") from None
            if not isinstance(obj, dict):
                raise FrameError(f"frame is a {type(obj).__name__}, expected a map")
            out.append(obj)
        return out


class DataPlane:
    """The node's handle on its data-plane child process."""

    def __init__(self, host: str = "127.0.0.1", *, python: str = sys.executable,
                 args: tuple[str, ...] = (), env: Mapping[str, str] | None = None,
                 on_status: Callable[[dict[str, Any]], None] | None = None,
                 restart_delay: float = 0.5, stderr: int | None = None) -> None:
        """``host`` fills a pushed table's ``host`` when it has none. ``args`` are extra
        command-line options of the data plane (``--loop asyncio``, ``--splice-after N``).
        ``on_status`` is called (on the node's loop) with every status map."""
        self.host = host
        self._cmd = (python, "-m", "p2pswarm.mesh.dataplane", *args)
        self._env = dict(env) if env is not None else None
        self._on_status = on_status
        self._restart_delay = restart_delay
        self._stderr = stderr
        self._proc: asyncio.subprocess.Process | None = None
        self._table: dict[str, Any] | None = None
        self._status: dict[str, Any] | None = None
        self._runner: asyncio.Task[None] | None = None
        self._closing = False
        self._started = asyncio.Event()
        self._status_event = asyncio.Event()
        self.restarts = 0
        self.frame_errors = 0

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.returncode is None else None

    async def start(self) -> None:
        """Start the child; returns once it runs (its first status may come later)."""
        if self._runner is not None:
            raise RuntimeError("DataPlane already started")
        self._runner = asyncio.get_running_loop().create_task(self._run(), name="dataplane")
        started = asyncio.ensure_future(self._started.wait())
        done, _ = await asyncio.wait({started, self._runner}, return_when=asyncio.FIRST_COMPLETED)
        if self._runner in done:
            started.cancel()
            self._runner.result()  # raises the spawn error
            raise RuntimeError("data plane exited at once")

    def push(self, table: Mapping[str, Any]) -> None:
        """Replace the data plane's table (sent now if the child runs, else on its start)."""
        t = dict(table)
        t.setdefault("host", self.host)
        self._table = t
        self._send({"table": t})

    def latest_status(self) -> dict[str, Any] | None:
        return self._status

    async def wait_status(self, predicate: Callable[[dict[str, Any]], bool],
                          timeout: float = 30.0) -> dict[str, Any]:
        """The first status (the latest included) for which ``predicate`` holds;
        raises TimeoutError after ``timeout`` seconds (generous: after a start or a restart, the
        first status waits for a new interpreter, seconds on a busy machine)."""
        async with asyncio.timeout(timeout):
            while True:
                if self._status is not None and predicate(self._status):
                    return self._status
                self._status_event.clear()
                await self._status_event.wait()

    async def close(self, timeout: float = 3.0) -> None:
        """Ask the child to stop, close its stdin, kill it if it lingers."""
        self._closing = True
        proc = self._proc
        if proc is not None and proc.returncode is None:
            self._send({"stop": True})
            try:
                if proc.stdin is not None:
                    proc.stdin.close()
            except (OSError, RuntimeError):
                pass
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()
        if self._runner is not None:
            self._runner.cancel()
            try:
                await self._runner
            except (asyncio.CancelledError, Exception):
                pass

    # -- internals -------------------------------------------------------------------------

    def _send(self, frame: Mapping[str, Any]) -> None:
        proc = self._proc
        if proc is None or proc.returncode is not None or proc.stdin is None:
            return
        try:
            proc.stdin.write(encode_frame(frame))
        except (OSError, RuntimeError) as e:  # the child just died: _run restarts it
            log.debug("data plane: write failed: %s", e)

    async def _run(self) -> None:
        delay = self._restart_delay
        while not self._closing:
            self._proc = await asyncio.create_subprocess_exec(
                *self._cmd, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=self._stderr, env=self._env, preexec_fn=die_with_parent_hook(),
                start_new_session=False)
            self._started.set()
            if self._table is not None:
                self._send({"table": self._table})
            await self._read(self._proc)
            rc = await self._proc.wait()
            if self._closing:
                return
            self.restarts += 1
            log.warning("data plane exited with code %s; restarting in %.1f s", rc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_RESTART_DELAY)

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        decoder = FrameDecoder()
        while True:
            data = await proc.stdout.read(65536)
            if not data:
                return
            try:
                frames = decoder.feed(data)
            except FrameError as e:  # our own child misbehaving: a bug, but keep routing
                self.frame_errors += 1
                log.error("data plane sent a bad frame (%s); restarting it", e)
                proc.kill()
                return
            for frame in frames:
                status = frame.get("status")
                if isinstance(status, dict):
                    self._status = status
                    self._status_event.set()
                    if self._on_status is not None:
                        self._on_status(status)
