"""A task whose processes try to outlive it: a child that stays in the task's process group and a
grandchild that calls ``setsid`` (a daemon's escape). Prints ``pids <child> <grandchild>``, then
idles, or (with ``exit``) exits at once, leaving both behind."""

import os
import sys
import time

r, w = os.pipe()
child = os.fork()
if child == 0:
    os.close(r)
    grandchild = os.fork()
    if grandchild == 0:
        os.setsid()
        os.close(w)
        time.sleep(300)
        os._exit(0)
    os.write(w, str(grandchild).encode())
    os.close(w)
    time.sleep(300)
    os._exit(0)
os.close(w)
grandchild = int(os.read(r, 32))
print(f"pids {child} {grandchild}", flush=True)
if sys.argv[1:] != ["exit"]:
    time.sleep(300)
