"""A hostile task for tests: tries to take its node over, prints what happened as one JSON line, then waits.

Usage: trespass.py DATA_DIR. It tries to read ``security/cluster.key`` and ``security/curve.key``,
to connect to ``api.sock`` and to list the data dir, reports its uid, and whether its $HOME and
working directory are its own (it writes a file in each).
"""

import json
import os
import signal
import socket
import sys


def attempt(action):
    try:
        action()
        return "ok"
    except OSError as exc:
        return type(exc).__name__


def connect(path):
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(path)


def write(path):
    with open(path, "w") as f:
        f.write("mine\n")


def main():
    data_dir = sys.argv[1]
    home = os.environ.get("HOME", "")
    report = {
        "uid": os.getuid(),
        "cluster.key": attempt(lambda: open(os.path.join(data_dir, "security", "cluster.key"), "rb").read()),
        "curve.key": attempt(lambda: open(os.path.join(data_dir, "security", "curve.key"), "rb").read()),
        "api.sock": attempt(lambda: connect(os.path.join(data_dir, "api.sock"))),
        "list": attempt(lambda: os.listdir(data_dir)),
        "home": home,
        "cwd": os.getcwd(),
        "write_home": attempt(lambda: write(os.path.join(home, "in-home"))),
        "write_cwd": attempt(lambda: write("in-cwd")),
    }
    print(json.dumps(report, sort_keys=True), flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        signal.pause()


if __name__ == "__main__":
    main()
