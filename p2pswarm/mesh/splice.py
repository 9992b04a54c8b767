"""The data plane's bulk path: moving a connection's bytes socket → pipe → socket with ``os.splice``.

A connection that streams bulk data (:data:`p2pswarm.mesh.conn.SPLICE_AFTER`) is handed over
(:func:`splicer_for`, on duplicates of its transports' sockets) to a :class:`ThreadedSplicer`
(a blocking splice loop per direction in a thread of its own) or a :class:`Splicer`
(non-blocking splices driven by the event loop); the bytes are never copied into Python.
"""

from __future__ import annotations

import fcntl
import os
import socket
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from p2pswarm.mesh.conn import Conn

PIPE_SIZE = 1 << 20
"""Kernel pipe size asked for by the splicer (capped by /proc/sys/fs/pipe-max-size)."""
SPLICE_ROUNDS = 8
"""Pipe fills moved per readiness event before yielding to other connections."""

_SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
_SPLICE_FLAGS_BLOCKING = getattr(os, "SPLICE_F_MOVE", 1)
HAVE_SPLICE = hasattr(os, "splice")


class _Dir:
    __slots__ = ("src", "dst", "pr", "pw", "pending", "eof", "done", "reading", "writing", "out", "total")

    def __init__(self, src: int, dst: int, out: bool) -> None:
        self.src, self.dst, self.out = src, dst, out
        self.pr, self.pw = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            fcntl.fcntl(self.pw, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        except (OSError, AttributeError):
            pass
        self.pending = 0
        self.total = 0
        """Bytes moved, counted by a ThreadedSplicer's thread (the loop splicer counts directly)."""
        self.eof = False
        self.done = False
        self.reading = False
        self.writing = False


def _directions(conn: Conn, cfd: int, bfd: int) -> tuple[_Dir, _Dir]:
    """client → backend and backend → client, each with its pipe; a side already at EOF is done."""
    up = _Dir(cfd, bfd, False)
    try:
        down = _Dir(bfd, cfd, True)
    except OSError:
        os.close(up.pr)
        os.close(up.pw)
        raise
    if conn.c_eof:
        up.eof = up.done = True
    if conn.b_eof:
        down.eof = down.done = True
    return up, down


class Splicer:
    """Moves a connection's bytes with os.splice (socket → pipe → socket), both directions,
    on the event loop; the sockets are duplicates of the ones the transports had."""

    __slots__ = ("conn", "loop", "cfd", "bfd", "up", "down", "closed")

    def __init__(self, conn: Conn, cfd: int, bfd: int) -> None:
        self.conn = conn
        self.loop = conn.mesh.loop
        self.cfd, self.bfd = cfd, bfd
        self.closed = False
        self.up, self.down = _directions(conn, cfd, bfd)

    def start(self) -> None:
        for d in (self.up, self.down):
            if not d.done:
                self._want_read(d)

    def _want_read(self, d: _Dir) -> None:
        if not d.reading:
            d.reading = True
            self.loop.add_reader(d.src, self._readable, d)

    def _readable(self, d: _Dir) -> None:
        conn = self.conn
        c = conn.c
        for _ in range(SPLICE_ROUNDS):
            try:
                n = os.splice(d.src, d.pw, PIPE_SIZE, flags=_SPLICE_FLAGS)
            except BlockingIOError:
                return
            except OSError:
                c.errors += 1
                self.close()
                return
            if n == 0:
                d.eof = True
                self.loop.remove_reader(d.src)
                d.reading = False
                self._flush(d)
                return
            d.pending += n
            conn.moved += n
            if d.out:
                c.bytes_out += n
            else:
                c.bytes_in += n
            if not self._flush(d):
                return

    def _flush(self, d: _Dir) -> bool:
        """Move the pipe's bytes to dst; False when dst is full (then wait for writable)."""
        while d.pending:
            try:
                m = os.splice(d.pr, d.dst, d.pending, flags=_SPLICE_FLAGS)
            except BlockingIOError:
                if d.reading:
                    self.loop.remove_reader(d.src)
                    d.reading = False
                if not d.writing:
                    d.writing = True
                    self.loop.add_writer(d.dst, self._writable, d)
                return False
            except OSError:
                self.conn.c.errors += 1
                self.close()
                return False
            d.pending -= m
        if d.writing:
            d.writing = False
            self.loop.remove_writer(d.dst)
        if d.eof:
            self._half_close(d)
            return False
        return True

    def _writable(self, d: _Dir) -> None:
        if self._flush(d) and not d.eof:
            self._want_read(d)
            self._readable(d)

    def _half_close(self, d: _Dir) -> None:
        d.done = True
        try:
            _shutdown(d.dst, socket.SHUT_WR)
        except OSError:
            pass
        if self.up.done and self.down.done:
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for d in (self.up, self.down):
            if d.reading:
                self.loop.remove_reader(d.src)
            if d.writing:
                self.loop.remove_writer(d.dst)
            os.close(d.pr)
            os.close(d.pw)
        os.close(self.cfd)
        os.close(self.bfd)
        self.conn.splicer = None
        self.conn.teardown()


class ThreadedSplicer:
    """Like :class:`Splicer`, but each direction is a tight blocking loop in a thread of its
    own: splice(src → pipe) then splice(pipe → dst) until EOF, then shutdown(dst, SHUT_WR).

    Only the owning thread touches a direction's fds while it runs; the loop thread stops
    both with shutdown(SHUT_RDWR) (which wakes blocked splices) and closes the fds once both
    threads have left (``_finish``, posted to the loop). Threads count bytes in ``d.pending``
    (their own int); :meth:`sync`, on the loop thread, adds them to the counters (at each
    tick, each status and at the end), so the counters have a single writer."""

    __slots__ = ("conn", "loop", "cfd", "bfd", "up", "down", "closed", "lock", "running", "failed",
                 "counted")

    def __init__(self, conn: Conn, cfd: int, bfd: int) -> None:
        self.conn = conn
        self.loop = conn.mesh.loop
        self.cfd, self.bfd = cfd, bfd
        self.closed = False
        self.lock = threading.Lock()
        self.running = 0
        self.failed = False
        self.counted = [0, 0]
        self.up, self.down = _directions(conn, cfd, bfd)

    def start(self) -> None:
        """Called once the transports let go of their sockets: from here the fds block."""
        for d in (self.up, self.down):
            os.set_blocking(d.pr, True)
            os.set_blocking(d.pw, True)
        os.set_blocking(self.cfd, True)
        os.set_blocking(self.bfd, True)
        self.conn.mesh.threaded.add(self)
        todo = [d for d in (self.up, self.down) if not d.done]
        self.running = len(todo)
        if not todo:
            self.loop.call_soon(self._finish)
            return
        for d in todo:
            try:
                threading.Thread(target=self._run, args=(d,), name="p2pswarm-splice", daemon=True).start()
            except RuntimeError:  # no thread: end this direction as if it failed
                self.failed = True
                self._stop()
                self._left()

    def _run(self, d: _Dir) -> None:
        src, dst, pr, pw = d.src, d.dst, d.pr, d.pw
        splice = os.splice
        size = PIPE_SIZE
        flags = _SPLICE_FLAGS_BLOCKING
        try:
            while True:
                n = splice(src, pw, size, flags=flags)
                if n == 0:
                    break
                d.total += n
                while n:
                    n -= splice(pr, dst, n, flags=flags)
            d.eof = True
            if not self.closed:
                try:
                    _shutdown(dst, socket.SHUT_WR)
                except OSError:
                    pass
        except OSError:
            with self.lock:
                if not self.closed:
                    self.failed = True
            self._stop()
        self._left()

    def _left(self) -> None:
        with self.lock:
            self.running -= 1
            last = self.running == 0
        if last:
            try:
                self.loop.call_soon_threadsafe(self._finish)
            except RuntimeError:  # the loop is gone (process ending): just release the fds
                self._release()

    def _stop(self) -> None:
        """Wake and end both threads (any thread may call this)."""
        with self.lock:
            if self.closed:
                return
            self.closed = True
        for fd in (self.cfd, self.bfd):
            try:
                _shutdown(fd, socket.SHUT_RDWR)
            except OSError:
                pass

    def sync(self) -> None:
        """Add the bytes the threads moved since the last call to the counters (loop thread)."""
        conn = self.conn
        c = conn.c
        n_in = self.up.total - self.counted[0]
        n_out = self.down.total - self.counted[1]
        if n_in or n_out:
            self.counted[0] += n_in
            self.counted[1] += n_out
            c.bytes_in += n_in
            c.bytes_out += n_out
            conn.moved += n_in + n_out

    def close(self) -> None:
        self._stop()

    def _release(self) -> None:
        for d in (self.up, self.down):
            os.close(d.pr)
            os.close(d.pw)
        os.close(self.cfd)
        os.close(self.bfd)

    def _finish(self) -> None:
        self.sync()
        self.closed = True
        self._release()
        conn = self.conn
        conn.mesh.threaded.discard(self)
        if self.failed:
            conn.c.errors += 1
        conn.splicer = None
        conn.teardown()


def _shutdown(fd: int, how: int) -> None:
    """shutdown(2) on a bare fd (a socket object only for the call: the fd stays open)."""
    s = socket.socket(fileno=fd)
    try:
        s.shutdown(how)
    finally:
        s.detach()


def splicer_for(conn: Conn, threaded: bool) -> Splicer | ThreadedSplicer | None:
    """A splicer (not started) on duplicates of ``conn``'s two sockets; None when they cannot be had
    (a transport without a socket, out of pipes or fds): the connection keeps copying."""
    try:
        cfd = os.dup(conn.ct.get_extra_info("socket").fileno())
    except (OSError, AttributeError):
        return None
    try:
        bfd = os.dup(conn.bt.get_extra_info("socket").fileno())
    except (OSError, AttributeError):
        os.close(cfd)
        return None
    try:
        return ThreadedSplicer(conn, cfd, bfd) if threaded else Splicer(conn, cfd, bfd)
    except OSError:
        os.close(cfd)
        os.close(bfd)
        return None
