"""A task that forks a helper into its own process group (as a shell script would), prints
``child <pid>`` and then either idles or (with ``exit``) exits at once, leaving the helper."""

import os
import sys
import time

child = os.fork()
if child == 0:
    time.sleep(300)
    os._exit(0)
print(f"child {child}", flush=True)
if sys.argv[1:] != ["exit"]:
    time.sleep(300)
