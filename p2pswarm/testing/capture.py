"""tcpdump on loopback for tests that must show what crosses the wire (root and tcpdump needed)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path


def tcpdump() -> str | None:
    """The tcpdump binary when it can capture here (root), else None (callers skip)."""
    path = shutil.which("tcpdump")
    return path if path is not None and os.geteuid() == 0 else None


class Capture:
    """tcpdump -i lo with a filter expression, started before the traffic it must see; ``stop()``
    returns the raw pcap bytes (payloads in clear, so a test can search them for a marker)."""

    def __init__(self, expression: str, pcap: Path) -> None:
        self.pcap = pcap
        argv = [tcpdump(), "-i", "lo", "--immediate-mode", "-U", "-n", "-s", "0", "-Z", "root", "-w", str(pcap),
                expression]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        line = self.proc.stderr.readline()
        self.ok = b"listening" in line
        self.why = line.decode(errors="replace").strip()

    def stop(self) -> bytes:
        if self.proc.poll() is None:
            self.proc.terminate()  # by its own pid
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.pcap.read_bytes() if self.pcap.exists() else b""
