"""A stand-in for a node with isolation, for crash tests: its reaper is running and one task is
started in a cgroup; prints ``{"pid": <task pid>, "reaper": <reaper pid>, "error": ...}`` on one
line, then idles until killed.

    python isolated_node.py DATA_DIR NODE_ID TASK_ID COMMAND...
"""

import asyncio
import json
import sys

from p2pswarm.runtime import cgroups
from p2pswarm.runtime.base import TaskSpec
from p2pswarm.runtime.process import ProcessConfig, ProcessRuntime
from p2pswarm.runtime.reaper import Watchdog


async def main(data_dir, node_id, task_id, command):
    node_cgroups, isolation = cgroups.for_node(node_id)
    watchdog = Watchdog()
    runtime = ProcessRuntime(data_dir, ProcessConfig(cgroups=node_cgroups, cgroups_off=isolation.reason),
                             watchdog=watchdog)
    watchdog.start()
    handle = await runtime.start(TaskSpec(task_id, "crash", 1, node_id, tuple(command)))
    print(json.dumps({"pid": handle.pid, "reaper": watchdog.pid, "error": handle.error}), flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]))
