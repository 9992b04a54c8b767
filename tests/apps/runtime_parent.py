"""A stand-in node for crash tests: starts one task with the process runtime, prints
``{"pid": <task pid>}`` on one line, then idles until killed.

    python runtime_parent.py DATA_DIR TASK_ID COMMAND...
"""

import asyncio
import json
import sys

from p2pswarm.runtime.base import TaskSpec
from p2pswarm.runtime.process import ProcessRuntime


async def main(data_dir, task_id, command):
    runtime = ProcessRuntime(data_dir)
    handle = await runtime.start(TaskSpec(task_id, "crash", 1, "parent", tuple(command)))
    print(json.dumps({"pid": handle.pid, "error": handle.error}), flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3:]))
