"""A private Docker Engine for tests: its own dockerd, socket, data, bridge, and a busybox image.

Tests never touch a system daemon. :class:`PrivateDockerd` starts ``dockerd`` (root only) with
every path under one short temporary directory (unix socket paths are limited to 107 bytes),
a bridge of its own (``p2psd<n>`` on a private /24, so two test sessions on one machine never
share ``docker0``) and ``--iptables=false --ip-forward=false``: published ports go through
Docker's userland proxy and the host's firewall and sysctls are left alone. No registry is
reachable, so :func:`import_busybox` builds the test image from the host's ``busybox-static``
with ``docker import`` (a root file system of one static binary and its applet links).

:meth:`PrivateDockerd.stop` stops the daemon by pid, kills what it left behind (found by our
temporary paths in their command lines, never by name), unmounts and removes the directory.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors

TEST_IMAGE = "p2pswarm-test/busybox:1"
BUSYBOX = Path("/bin/busybox")
START_TIMEOUT = 60.0
"""Seconds a fresh dockerd may take to answer (containerd starts first; seconds on a loaded 2-core box)."""
STOP_TIMEOUT = 20.0
"""Seconds a dockerd gets to stop its containers and exit after SIGTERM, before SIGKILL."""
PREFIX = "p2psd"
"""Names of our temporary directories (``/tmp/p2psd<pid>-...``) and bridges (``p2psd<pid><letter>``)."""
SUBNET_BASE = ipaddress.IPv4Network("10.213.0.0/16")
"""Private bridges are /24s of this range, one per running private dockerd."""


class DockerdUnavailable(Exception):
    """No private dockerd here (not root, no dockerd, or it did not start); the message says why."""


def unavailable_reason() -> str | None:
    """Why a private dockerd cannot run on this machine, or None if it may."""
    if os.geteuid() != 0:
        return "a private dockerd needs root"
    for tool in ("dockerd", "containerd", "runc", "ip"):
        if shutil.which(tool) is None:
            return f"{tool} not found (apt-get install docker.io iproute2)"
    if not BUSYBOX.is_file():
        return f"{BUSYBOX} not found (apt-get install busybox-static)"
    return None


def _pdeath_sigterm() -> None:
    """preexec_fn: dockerd gets SIGTERM (and stops its containers) if the test process dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class PrivateDockerd:
    """One dockerd of our own; ``socket`` is its ``unix://`` URL once :meth:`start` returned."""

    _made = 0

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir="/tmp"))
        self.socket = f"unix://{self.root}/d.sock"
        PrivateDockerd._made += 1
        self.bridge = f"{PREFIX}{os.getpid() % 100000}{chr(97 + PrivateDockerd._made % 26)}"  # <= 15 characters
        self.proc: subprocess.Popen | None = None
        self._bridge_made = False

    def start(self) -> None:
        why = unavailable_reason()
        if why is not None:
            raise DockerdUnavailable(why)
        sweep_stale()
        try:
            self._make_bridge()
            (self.root / "daemon.json").write_text("{}\n")  # never the machine's /etc/docker/daemon.json
            argv = ["dockerd", "--host", self.socket, "--data-root", str(self.root / "data"),
                    "--exec-root", str(self.root / "x"), "--pidfile", str(self.root / "pid"),
                    "--config-file", str(self.root / "daemon.json"), "--bridge", self.bridge,
                    "--iptables=false", "--ip6tables=false", "--ip-forward=false", "--ip-masq=false",
                    "--shutdown-timeout", "2", "--log-level", "warn"]
            with open(self.root / "dockerd.log", "ab") as out:
                self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                             preexec_fn=_pdeath_sigterm)
            self._wait_ready()
        except subprocess.CalledProcessError as exc:
            self.stop()
            raise DockerdUnavailable(f"cannot set up bridge {self.bridge}: {exc.stderr or exc}") from None
        except BaseException:
            self.stop()
            raise

    def client(self, timeout: float = 60) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.socket, timeout=timeout)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise DockerdUnavailable(f"dockerd exited with {self.proc.returncode}: {self.log_tail()}")
            if Path(self.socket[len("unix://"):]).exists():
                with contextlib.closing(self.client(timeout=5)) as c:
                    with contextlib.suppress(docker.errors.DockerException, OSError):
                        if c.ping():
                            return
            time.sleep(0.1)
        raise DockerdUnavailable(f"dockerd did not answer within {START_TIMEOUT:.0f}s: {self.log_tail()}")

    def log_tail(self, lines: int = 3) -> str:
        try:
            text = (self.root / "dockerd.log").read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(text[-lines:]) or "(empty log)"

    def _make_bridge(self) -> None:
        taken = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True).stdout
        subnets = list(SUBNET_BASE.subnets(new_prefix=24))
        start = os.getpid() % len(subnets)  # two sessions starting at once rarely try the same one first
        for subnet in subnets[start:] + subnets[:start]:
            prefix = str(subnet.network_address)[:-1]  # "10.213.7."
            if f" {prefix}" in taken:
                continue
            gateway = f"{subnet.network_address + 1}/24"
            made = subprocess.run(["ip", "link", "add", "name", self.bridge, "type", "bridge"],
                                  capture_output=True, text=True)
            if made.returncode != 0:
                raise DockerdUnavailable(f"cannot create bridge {self.bridge}: {made.stderr.strip()}")
            self._bridge_made = True
            subprocess.run(["ip", "addr", "add", gateway, "dev", self.bridge], check=True, capture_output=True)
            subprocess.run(["ip", "link", "set", self.bridge, "up"], check=True, capture_output=True)
            return
        raise DockerdUnavailable(f"no free /24 left in {SUBNET_BASE} for a private bridge")

    def stop(self) -> None:
        """Stop dockerd (SIGTERM, then SIGKILL), then whatever of ours outlived it; remove everything."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            self.proc = None
        if self._bridge_made:
            subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
            self._bridge_made = False
        _remove_root(self.root)


def _remove_root(root: Path) -> None:
    """Kill the processes started with our paths (containerd, shims), unmount what is mounted below
    ``root`` and delete it."""
    for pid in _pids_mentioning(str(root)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for mount in _mounts_under(str(root)):
        subprocess.run(["umount", "-l", mount], capture_output=True)
    shutil.rmtree(root, ignore_errors=True)


def sweep_stale() -> None:
    """Remove what private dockerds of test processes that died (SIGKILL, a crash) left: their
    processes, mounts and directories, and bridges. Only ours: named after a pid that is gone."""
    for root in Path("/tmp").glob(f"{PREFIX}*-*"):
        pid = root.name[len(PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            _remove_root(root)
    links = subprocess.run(["ip", "-o", "link", "show", "type", "bridge"], capture_output=True, text=True).stdout
    for line in links.splitlines():
        name = line.split(":")[1].strip().split("@")[0] if line.count(":") >= 2 else ""
        digits = name[len(PREFIX):-1]
        if name.startswith(PREFIX) and digits.isdigit() and not _pid_alive_ending(digits):
            subprocess.run(["ip", "link", "del", name], capture_output=True)


def _pid_alive_ending(digits: str) -> bool:
    """Whether a live process's pid ends in ``digits`` (bridge names keep a pid's last five digits)."""
    return any(e.name.isdigit() and int(e.name) % 100000 == int(digits) for e in Path("/proc").iterdir())


def _pids_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(int(entry.name))
    return found


def _mounts_under(root: str) -> list[str]:
    """Mount points below ``root``, deepest first (so each unmounts before its parent)."""
    points = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4].replace("\\040", " ")
            if point == root or point.startswith(root + "/"):
                points.append(point)
    return sorted(points, key=len, reverse=True)


def busybox_rootfs() -> bytes:
    """A tar of a minimal root: /bin/busybox, a link per applet, /etc/passwd and /etc/group, /tmp."""
    applets = subprocess.run([str(BUSYBOX), "--list"], capture_output=True, text=True, check=True).stdout.split()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, mode in (("bin", 0o755), ("etc", 0o755), ("tmp", 0o1777), ("root", 0o700), ("www", 0o755),
                           ("proc", 0o555), ("sys", 0o555), ("dev", 0o755), ("run", 0o755)):
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, mode
            tar.addfile(info)
        tar.add(str(BUSYBOX), arcname="bin/busybox")
        for applet in applets:
            if applet != "busybox":
                link = tarfile.TarInfo(f"bin/{applet}")
                link.type, link.linkname = tarfile.SYMTYPE, "busybox"
                tar.addfile(link)
        for name, text in (("etc/passwd", "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n"),
                           ("etc/group", "root:x:0:\nnogroup:x:65534:\n"),
                           ("www/index.html", "hello from busybox\n")):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def import_busybox(client: docker.DockerClient, tag: str = TEST_IMAGE) -> str:
    """``docker import`` of :func:`busybox_rootfs` as ``tag`` (PATH set, ``sh`` by default); returns the tag."""
    repository, _, version = tag.rpartition(":")
    client.api.import_image_from_data(busybox_rootfs(), repository=repository, tag=version,
                                      changes=["ENV PATH=/bin", 'CMD ["sh"]'])
    return tag


@dataclass(frozen=True)
class PrivateEngine:
    """What a test session's private engine offers: its ``socket`` (a ``unix://`` URL), a local ``image``
    and how long the daemon took to answer and the image to import (seconds)."""

    socket: str
    image: str
    started_in: float
    imported_in: float
    daemon: PrivateDockerd

    def client(self, timeout: float = 60) -> docker.DockerClient:
        return self.daemon.client(timeout)


def start_test_engine() -> PrivateEngine:
    """A private dockerd with :data:`TEST_IMAGE` imported; raises DockerdUnavailable (stop it with ``.daemon``)."""
    daemon = PrivateDockerd()
    began = time.monotonic()
    daemon.start()
    started = time.monotonic() - began
    try:
        with contextlib.closing(daemon.client()) as client:
            import_busybox(client)
    except (docker.errors.DockerException, OSError, subprocess.SubprocessError) as exc:
        daemon.stop()
        raise DockerdUnavailable(f"cannot import the test image: {exc}") from None
    return PrivateEngine(daemon.socket, TEST_IMAGE, started, time.monotonic() - began - started, daemon)


class HungEngine:
    """A unix socket that accepts connections and never answers: to a node, an engine that hangs.

    Use as a context manager; the socket is at ``path`` and ``url`` names it as an engine socket."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.url = f"unix://{path}"
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._held: list[socket.socket] = []

    def __enter__(self) -> HungEngine:
        self._server.bind(str(self.path))
        self._server.listen(64)
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                self._held.append(self._server.accept()[0])

    def __exit__(self, *exc: object) -> None:
        self._server.close()
        for conn in self._held:
            conn.close()
