"""Several real nodes in one OS process, for benchmarks that need more nodes than the machine holds processes.

Each node keeps all that a node owns: its ZeroMQ sockets (SWIM, Raft, join endpoint), API socket, data dir,
components, Raft I/O thread, task reaper. The nodes share the process and one asyncio loop, and what is
process-wide is owned here, once, instead of by each node:

- the signal handlers: SIGTERM or SIGINT make every node leave (a second one stops them at once);
- the logging configuration: one stream, each line tagged with its node's name (:mod:`p2pswarm.node.logtag`);
- the open-file limit, raised to the hard limit: every peer connection costs a node a few descriptors.

A node sharing the process shares its pid, so ``p2pswarm down`` on any of them stops them all. The mesh data
plane (a child process per node) starts only when a service publishes a port, so a cluster running
unpublished services has none.

Usage: ``python -m p2pswarm.testing.multinode SPEC.json`` with SPEC
``{"log_level": "info", "nodes": [{NodeOptions field: value, ...}, ...]}``. A node with ``peers`` and no
``token`` joins with ``$P2PSWARM_TOKEN`` (kept out of argv and of the file). Exits 0 when every node stopped
cleanly, 1 when one failed (its one-line reason is logged with its name).

``$P2PSWARM_PROFILE=PATH`` profiles the loop's thread (cProfile on that thread's CPU time, so time spent waiting
for a core under load is not counted) and rewrites ``PATH`` (pstats format; ``{pid}`` in it becomes the process
id) every ``PROFILE_EVERY`` seconds: read it with ``python -m pstats PATH`` while the nodes run.
"""

from __future__ import annotations

import asyncio
import cProfile
import dataclasses
import json
import logging
import os
import resource
import signal
import sys
import time
from pathlib import Path
from typing import Any

from p2pswarm.node.daemon import Node
from p2pswarm.node.options import NodeOptions, configure_logging

log = logging.getLogger("p2pswarm.testing.multinode")

PROFILE_EVERY = 10.0
"""Seconds between two writes of the ``$P2PSWARM_PROFILE`` file."""
TUPLE_FIELDS = frozenset({"peers", "labels"})
"""NodeOptions fields that are tuples (JSON has lists; labels are ``[[key, value], ...]``)."""


class SpecError(ValueError):
    """The spec file is not what this host runs (one line)."""


def node_options(fields: dict[str, Any], token: str | None) -> NodeOptions:
    """One node's options from its spec entry; an unknown field is a SpecError."""
    known = {f.name for f in dataclasses.fields(NodeOptions)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise SpecError(f"unknown node option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    values = dict(fields)
    for key in TUPLE_FIELDS & values.keys():
        values[key] = tuple(tuple(v) if isinstance(v, list) else v for v in values[key])
    if values.get("peers") and values.get("token") is None:
        values["token"] = token
    return NodeOptions(**values)


def read_spec(path: Path, token: str | None) -> tuple[str, list[NodeOptions]]:
    """The log level and the nodes' options from ``path``; SpecError with one line otherwise."""
    try:
        spec = json.loads(path.read_text())
        entries = spec["nodes"]
        level = spec.get("log_level", "info")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SpecError(f"cannot read the node spec {path}: {exc}") from None
    if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
        raise SpecError(f"{path}: 'nodes' must be a non-empty list of option maps")
    return level, [node_options(e, token) for e in entries]


def raise_file_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def write_profile(profiler: cProfile.Profile, path: str) -> None:
    """Rewrite ``path`` with what ``profiler`` saw so far, every PROFILE_EVERY seconds, until cancelled."""
    while True:
        await asyncio.sleep(PROFILE_EVERY)
        profiler.dump_stats(path)  # (dumping disables the profiler)
        profiler.enable()


async def run_nodes(options: list[NodeOptions], profile: str | None = None) -> int:
    """Run every node on this loop until all stopped; 1 if one failed. ``profile``: see the module's help."""
    nodes = [Node(o, handle_signals=False) for o in options]
    loop = asyncio.get_running_loop()
    profiler = cProfile.Profile(time.thread_time) if profile else None
    if profiler is not None:
        profiler.enable()
        writer = asyncio.ensure_future(write_profile(profiler, profile))  # type: ignore[arg-type]

    def stop_all() -> None:
        for node in nodes:
            node.request_shutdown()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop_all)
    try:
        results = await asyncio.gather(*(node.run() for node in nodes), return_exceptions=True)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        if profiler is not None:
            writer.cancel()
            profiler.dump_stats(profile)  # type: ignore[arg-type]
    failed = 0
    for node, result in zip(nodes, results):
        if isinstance(result, BaseException):
            failed += 1
            log.error("node %s failed: %s", node.name or node.options.name or node.options.data_dir, result)
    return 1 if failed else 0


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m p2pswarm.testing.multinode SPEC.json", file=sys.stderr)
        return 2
    try:
        level, options = read_spec(Path(argv[0]), os.environ.get("P2PSWARM_TOKEN"))
    except SpecError as exc:
        print(f"p2pswarm multinode: {exc}", file=sys.stderr)
        return 2
    configure_logging(level, tag_nodes=True)
    raise_file_limit()
    profile = os.environ.get("P2PSWARM_PROFILE", "").replace("{pid}", str(os.getpid()))
    return asyncio.run(run_nodes(options, profile or None))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
