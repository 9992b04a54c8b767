"""Bounded HTTP client load for chaos runs: ``python -m p2pswarm.lab.load ...``.

Sends ``GET PATH`` to the targets in turn (round-robin), ``rate`` requests per second
for ``duration`` seconds, each on a new TCP connection with a ``timeout`` for the whole
exchange; a request is ok when the answer's status is 200. At most ``rate × timeout + 8``
requests are in flight; one that would exceed it is counted as failed (``client_busy``)
instead of queueing. It always stops by itself: ``rate ≤ 200``, ``duration ≤ 600``.

The schedule is anchored at ``--t0`` (a ``time.monotonic()`` value of the caller: the
clock is system-wide, so the caller's action times and these request times line up).
The result file is JSON::

    {"t0": ..., "targets": ["host:port", ...], "rate": r, "timeout": s,
     "requests": [[t_sent, target_index, ok 0/1, latency_ms, error or ""], ...]}

It runs as its own process so that a chaos run can start it inside the lab's bridge
namespace (``ip netns exec p2ps-L-br ...``), where the node addresses are reachable.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import os
import signal
import sys
import time

MAX_RATE = 200.0
MAX_DURATION = 600.0


def classify(exc: BaseException) -> str:
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, ConnectionResetError):
        return "reset"
    if isinstance(exc, OSError) and exc.errno:
        return errno.errorcode.get(exc.errno, "oserror").lower()
    return type(exc).__name__.lower()


async def request(host: str, port: int, path: str) -> tuple[bool, str]:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(f"GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        data = await reader.read(65536)
        while True:  # read to EOF so a half-sent answer is not counted as ok
            more = await reader.read(65536)
            if not more:
                break
            data += more
    finally:
        writer.close()
    if not data:
        return False, "empty"
    parts = data.split(b"\r\n", 1)[0].split()
    if len(parts) < 2 or not parts[1].isdigit():
        return False, "bad_answer"
    status = int(parts[1])
    return (True, "") if status == 200 else (False, f"http_{status}")


async def run(targets: list[tuple[str, int]], rate: float, duration: float, timeout: float, t0: float,
              path: str, stop: asyncio.Event) -> list[list]:
    results: list[list] = []
    if rate <= 0:
        return results
    max_inflight = int(rate * timeout) + 8
    inflight: set[asyncio.Task] = set()
    count = int(rate * duration)

    async def one(i: int, sent: float) -> None:
        host, port = targets[i % len(targets)]
        start = time.monotonic()
        try:
            ok, err = await asyncio.wait_for(request(host, port, path), timeout)
        except Exception as exc:  # every failure is a result, never a crash of the load
            ok, err = False, classify(exc)
        results.append([round(sent - t0, 4), i % len(targets), int(ok), round((time.monotonic() - start) * 1000, 2),
                        err])

    for i in range(count):
        due = t0 + i / rate
        delay = due - time.monotonic()
        if delay > 0:
            try:
                await asyncio.wait_for(stop.wait(), delay)
            except asyncio.TimeoutError:
                pass
        if stop.is_set():
            break
        if len(inflight) >= max_inflight:
            results.append([round(due - t0, 4), i % len(targets), 0, 0.0, "client_busy"])
            continue
        task = asyncio.ensure_future(one(i, max(due, time.monotonic())))
        inflight.add(task)
        task.add_done_callback(inflight.discard)
    if inflight:
        await asyncio.gather(*inflight, return_exceptions=True)
    results.sort(key=lambda r: r[0])
    return results


def parse_target(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected host:port, got {value!r}")
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m p2pswarm.lab.load", description=__doc__.splitlines()[0])
    parser.add_argument("--targets", required=True, help="host:port,host:port,...")
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--timeout", type=float, default=1.0)
    parser.add_argument("--t0", type=float, default=None, help="time.monotonic() of the start [default: now]")
    parser.add_argument("--path", default="/")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    try:
        targets = [parse_target(t) for t in args.targets.split(",") if t]
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    if not targets:
        parser.error("--targets is empty")
    if not 0 <= args.rate <= MAX_RATE or not 0 < args.duration <= MAX_DURATION or not 0 < args.timeout <= 10:
        parser.error(f"need 0 <= rate <= {MAX_RATE:g}, 0 < duration <= {MAX_DURATION:g}, 0 < timeout <= 10")
    t0 = time.monotonic() if args.t0 is None else args.t0

    async def amain() -> list[list]:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        return await run(targets, args.rate, args.duration, args.timeout, t0, args.path, stop)

    results = asyncio.run(amain())
    with open(args.out + ".tmp", "w") as fh:
        json.dump({"t0": t0, "targets": [f"{h}:{p}" for h, p in targets], "rate": args.rate,
                   "timeout": args.timeout, "requests": results}, fh)
    os.replace(args.out + ".tmp", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
