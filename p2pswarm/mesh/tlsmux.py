"""One TLS connection between two meshes carries client connections one after another.

A TLS 1.3 handshake with certificates on both sides costs the two nodes far more CPU than
the short HTTP exchange it protects, so an encrypted port with a new client connection per
request spent most of its time in handshakes.  A :class:`Session` keeps the TLS connection
after a client connection ends and the next one to the same relay reuses it
(:class:`SessionPool`); only the first pays for a handshake.

Each client connection is a *stream* of the session, with the relay protocol of
:mod:`p2pswarm.mesh.relayproto` inside it as before.  Frames (inside TLS)::

    stream id (4 bytes) | kind (1 byte) | length (4 bytes) | payload (length bytes)

    kind DATA: payload bytes of the stream;  EOF: this side sends no more (a half-close,
    which plain TLS cannot carry);  RESET: this side abandons the stream.

One stream at a time: a side is done with a stream once it has *sent* an end (EOF or RESET)
and *received* one; only then does the opening side (the client's node) start the next
stream, with a higher id.  As TLS keeps order, the other side has by then seen both ends as
well.  A side that receives RESET before it sent an end answers RESET; frames of an older
stream are dropped.  Anything else (a short or oversized frame, an unknown kind, data after
an end, a new stream before the last one ended, a stream the accepting side did not open)
is a protocol error: the session is closed and counted.

A :class:`Stream` looks like an asyncio transport to the connection objects of
:mod:`p2pswarm.mesh.conn` (write, write_eof, close, abort, pause/resume_reading, ...), so
they do not know whether their far side is a socket or a stream.
"""

from __future__ import annotations

import asyncio
import struct
from collections import deque
from typing import Any, Callable

HEADER = struct.Struct(">IBI")
DATA, EOF, RESET = 0, 1, 2
MAX_SID = 0xFFFFFFFF - 1
"""A session that reaches this stream id takes no more streams."""
MAX_FRAME = 1 << 20
"""Longest payload accepted in one frame (a peer sending more is broken or hostile)."""
WRITE_CHUNK = 256 * 1024
"""Longest payload this side puts in one frame."""
VIEW_FROM = 4096
"""Payload pieces of at least this size are passed on as memoryviews of the read (no copy)."""
JOIN_BELOW = 16 * 1024
"""Payloads up to this size are sent in one write with their header (a TLS record holds 16 kB)."""
IDLE_TIMEOUT = 30.0
"""Seconds an idle session waits in the pool for the next stream before it is closed."""
SERVER_IDLE_TIMEOUT = IDLE_TIMEOUT * 2
"""Seconds the accepting side keeps an idle session (longer: the opening side closes first)."""
MAX_IDLE_PER_RELAY = 64
"""Idle sessions kept per relay address (more are closed when their stream ends)."""


class Stream:
    """One client connection inside a session: the transport its protocol writes to."""

    __slots__ = ("session", "sid", "protocol", "sent_end", "recv_end", "closed", "paused")

    def __init__(self, session: "Session", sid: int, protocol: asyncio.Protocol) -> None:
        self.session, self.sid, self.protocol = session, sid, protocol
        self.sent_end = self.recv_end = self.closed = self.paused = False

    # the transport interface

    def write(self, data: bytes) -> None:
        if self.sent_end or self.closed or not data:
            return
        t = self.session.transport
        if t is not None and len(data) <= JOIN_BELOW:  # one write, so one TLS record (a record for the
            t.write(HEADER.pack(self.sid, DATA, len(data)) + data)  # header alone costs more)
        else:
            self.session.send_data(self.sid, data)

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        if not self.sent_end and not self.closed:
            self._send_end(EOF)
            self._check_done()

    def close(self) -> None:
        """Graceful: our end is an EOF; a RESET too if the peer may still send (we no longer read)."""
        self._end(graceful=True)

    def abort(self) -> None:
        self._end(graceful=False)

    def _end(self, graceful: bool) -> None:
        if self.closed:
            return
        self._close_here()
        if graceful and not self.sent_end:
            self._send_end(EOF)
        if not self.sent_end or not self.recv_end:
            self._send_end(RESET)
        self._lost(None)
        self._check_done()

    def is_closing(self) -> bool:
        t = self.session.transport
        return self.closed or t is None or t.is_closing()

    def pause_reading(self) -> None:
        if not self.paused and not self.closed:
            self.paused = True
            self.session.pause_reading()

    def resume_reading(self) -> None:
        if self.paused:
            self.paused = False
            self.session.resume_reading()

    def get_write_buffer_size(self) -> int:
        t = self.session.transport
        return t.get_write_buffer_size() if t is not None else 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name in ("socket", "sslcontext"):  # never spliced; and a stream carries half-closes
            return default
        t = self.session.transport
        return t.get_extra_info(name, default) if t is not None else default

    # frames from the peer

    def on_frame(self, kind: int, payload: bytes) -> None:
        if kind == RESET:  # also after the peer's EOF: it no longer reads either, so we stop too
            self.recv_end = True
            if not self.sent_end:
                self._send_end(RESET)
            self._over()  # like a relay connection's close by the other mesh: not an error here
            self._check_done()
            return
        if self.recv_end:
            raise ProtocolError("data after the end of a stream")
        if kind == DATA:
            if not self.closed:
                self.protocol.data_received(payload)
            return
        self.recv_end = True  # EOF
        if not self.closed and not self.protocol.eof_received():
            self.close()
        self._check_done()

    def on_session_lost(self, exc: Exception | None) -> None:
        if not self.closed:
            self.closed = True
            self.protocol.connection_lost(exc or ConnectionResetError("the mesh TLS connection closed"))

    # inside

    def _close_here(self) -> None:
        """No more reading or writing by our protocol: a pause it asked for ends here, or the
        peer's end frame (which finishes the stream) could never be read."""
        self.closed = True
        self.resume_reading()

    def _send_end(self, kind: int) -> None:
        self.sent_end = True
        self.session.send_frame(self.sid, kind)

    def _lost(self, exc: Exception | None) -> None:
        self.session.loop.call_soon(self.protocol.connection_lost, exc)

    def _over(self) -> None:
        """Our protocol hears, once, that the stream is over."""
        if not self.closed:
            self._close_here()
            self._lost(None)

    def _check_done(self) -> None:
        if self.sent_end and self.recv_end:
            self._over()  # (both sides may have ended without a close(): over all the same)
            self.session.stream_done(self)


class ProtocolError(Exception):
    pass


class Session(asyncio.Protocol):
    """A TLS connection between two meshes carrying one stream at a time.

    ``on_stream(session, sid)`` (accepting side) returns the protocol for a stream the peer
    opens; ``on_idle(session)`` is told when a stream ends and the session can take the next.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, on_stream: Callable[["Session", int], Any] | None,
                 on_idle: Callable[["Session"], None], on_lost: Callable[["Session"], None],
                 idle_timeout: float) -> None:
        self.loop = loop
        self.on_stream, self.on_idle, self.on_lost = on_stream, on_idle, on_lost
        self.idle_timeout = idle_timeout
        self.transport: Any = None
        self.stream: Stream | None = None
        self.last_sid = 0
        self.head = bytearray()
        """A frame header split across reads."""
        self.need = 0
        """Payload bytes of the current DATA frame still to come (for stream ``need_sid``)."""
        self.need_sid = 0
        self.reading_paused = False
        self.writing_paused = False
        self.retiring = False
        self.streams = 0
        self.protocol_errors = 0
        self.ctx: Any = None
        """The SSLContext the session was made with (older TLS material is not reused)."""
        self.peer: tuple[str, str] | None = None
        """(cluster id, node id) of the peer's verified certificate."""
        self._idle_timer: asyncio.TimerHandle | None = None

    # asyncio protocol (the TLS transport)

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self._arm_idle()

    def data_received(self, data: bytes) -> None:
        """Cut ``data`` into frames.  A DATA payload is passed on as it arrives (a frame may span
        many reads, and a read many frames) so payload bytes are never buffered here; only a
        frame header split across reads is."""
        pos, n = 0, len(data)
        try:
            while pos < n:
                if self.need:
                    take = min(self.need, n - pos)
                    if take == n:
                        chunk = data
                    elif take < VIEW_FROM:
                        chunk = data[pos:pos + take]
                    else:  # bulk: a view, not a copy (``data`` is bytes and never changes)
                        chunk = memoryview(data)[pos:pos + take]
                    self.need -= take
                    pos += take
                    stream = self.stream
                    if stream is not None and stream.sid == self.need_sid and not stream.recv_end:
                        if not stream.closed:
                            stream.protocol.data_received(chunk)
                    else:
                        self._dispatch(self.need_sid, DATA, chunk)
                elif not self.head and n - pos >= HEADER.size:
                    sid, kind, length = HEADER.unpack_from(data, pos)
                    pos += HEADER.size
                    if kind == DATA and 0 < length <= MAX_FRAME:  # the usual frame, without a call
                        self.need, self.need_sid = length, sid
                    else:
                        self._header(sid, kind, length)
                else:
                    missing = HEADER.size - len(self.head)
                    self.head += data[pos:pos + missing]
                    pos += missing
                    if len(self.head) < HEADER.size:
                        return
                    self._header(*HEADER.unpack(self.head))
                    self.head.clear()
                if self.transport is None:
                    return
        except ProtocolError:
            self.protocol_errors += 1
            self.on_protocol_error()
            self.abort()

    def _header(self, sid: int, kind: int, length: int) -> None:
        if kind == DATA:
            if not 0 < length <= MAX_FRAME:
                raise ProtocolError("bad frame length")
            self.need, self.need_sid = length, sid
            return
        if kind > RESET or length:
            raise ProtocolError("bad frame")
        self._dispatch(sid, kind, b"")

    def on_protocol_error(self) -> None:
        """A hook: the peer broke the framing (the session is closed right after)."""

    def eof_received(self) -> bool:
        return False  # TLS: the peer is going away; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._disarm_idle()
        stream, self.stream = self.stream, None
        if stream is not None:
            stream.on_session_lost(exc)
        self.on_lost(self)

    def pause_writing(self) -> None:
        self.writing_paused = True
        if self.stream is not None and not self.stream.closed:
            self.stream.protocol.pause_writing()

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self.stream is not None and not self.stream.closed:
            self.stream.protocol.resume_writing()

    def ssl_object(self) -> Any:
        return self.transport.get_extra_info("ssl_object") if self.transport is not None else None

    # streams

    def idle(self) -> bool:
        return self.stream is None and self.transport is not None and not self.transport.is_closing()

    def open_stream(self, protocol: asyncio.Protocol) -> Stream:
        """Start the next stream (opening side); the session must be idle."""
        assert self.idle()
        self._disarm_idle()
        self.last_sid += 1
        return self._start(self.last_sid, protocol)

    def _start(self, sid: int, protocol: Any) -> Stream:
        stream = self.stream = Stream(self, sid, protocol)
        self.streams += 1
        protocol.connection_made(stream)
        if self.writing_paused and not stream.closed:  # the TLS buffer is still full from the last stream
            protocol.pause_writing()
        return stream

    def _dispatch(self, sid: int, kind: int, payload: bytes) -> None:
        stream = self.stream
        if stream is not None and sid == stream.sid:
            stream.on_frame(kind, payload)
            return
        if sid <= self.last_sid:
            return  # a stream that ended here already: its late frames are dropped
        if stream is not None or self.on_stream is None or kind != DATA:
            raise ProtocolError("a new stream before the last one ended")
        if self.retiring or self.transport is None or self.transport.is_closing():
            return  # closing: the peer learns it from the closed connection
        self._disarm_idle()
        self.last_sid = sid
        stream = self._start(sid, self.on_stream(self, sid))
        if self.stream is stream and not stream.closed:
            stream.on_frame(kind, payload)

    def stream_done(self, stream: Stream) -> None:
        if self.stream is not stream:
            return
        self.stream = None
        if self.reading_paused:
            self.resume_reading()
        if self.retiring or self.last_sid >= MAX_SID:  # (ids are 4 bytes: a session ends before they run out)
            self.close()
            return
        self._arm_idle()
        self.on_idle(self)

    # sending

    def send_data(self, sid: int, data: bytes) -> None:
        """A large write (:meth:`Stream.write` joins small ones to their header itself): frames of at
        most WRITE_CHUNK, payload not copied, all in one writelines (one flush to the socket)."""
        t = self.transport
        if t is None:
            return
        view = memoryview(data)
        parts: list[Any] = []
        for start in range(0, len(view), WRITE_CHUNK):
            chunk = view[start:start + WRITE_CHUNK]
            parts += (HEADER.pack(sid, DATA, len(chunk)), chunk)
        t.writelines(parts)

    def send_frame(self, sid: int, kind: int) -> None:
        if self.transport is not None:
            self.transport.write(HEADER.pack(sid, kind, 0))

    # flow control and the end

    def pause_reading(self) -> None:
        if not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.reading_paused and self.transport is not None:
            self.reading_paused = False
            self.transport.resume_reading()

    def retire(self) -> None:
        """Take no new stream: close now if idle, else once the current stream ends."""
        self.retiring = True
        if self.stream is None:
            self.close()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        t = self.transport
        if t is not None:
            t.abort()

    def _arm_idle(self) -> None:
        self._disarm_idle()
        self._idle_timer = self.loop.call_later(self.idle_timeout, self.close)

    def _disarm_idle(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None


class SessionPool:
    """Idle sessions of the opening side, per relay address, reused most recent first."""

    def __init__(self, loop: asyncio.AbstractEventLoop, max_idle: int = MAX_IDLE_PER_RELAY,
                 idle_timeout: float = IDLE_TIMEOUT) -> None:
        self.loop = loop
        self.max_idle, self.idle_timeout = max_idle, idle_timeout
        self.idle: dict[tuple[str, int], deque[Session]] = {}
        self.addr_of: dict[Session, tuple[str, int]] = {}
        self.opened = 0
        self.reused = 0

    def take(self, addr: tuple[str, int], usable: Callable[[Session], bool]) -> Session | None:
        """An idle session to ``addr`` that ``usable`` accepts (others are closed), or None."""
        sessions = self.idle.get(addr)
        found = None
        while sessions and found is None:
            session = sessions.pop()
            if session.idle() and usable(session):
                self.reused += 1
                found = session
            else:
                session.close()
        if sessions is not None and not sessions:
            del self.idle[addr]
        return found

    async def connect(self, addr: tuple[str, int], ssl_context: Any, handshake_timeout: float) -> Session:
        """A new session to ``addr`` (its TLS handshake done)."""
        def factory() -> Session:
            return Session(self.loop, None, self._released, self._lost, self.idle_timeout)
        _, session = await self.loop.create_connection(factory, addr[0], addr[1], ssl=ssl_context,
                                                        server_hostname="",
                                                        ssl_handshake_timeout=handshake_timeout)
        self.opened += 1
        self.addr_of[session] = addr
        return session

    def _released(self, session: Session) -> None:
        addr = self.addr_of.get(session)
        if addr is None:
            session.close()
            return
        sessions = self.idle.setdefault(addr, deque())
        if len(sessions) >= self.max_idle:
            session.close()
            return
        sessions.append(session)

    def _lost(self, session: Session) -> None:
        addr = self.addr_of.pop(session, None)
        sessions = self.idle.get(addr) if addr is not None else None
        if sessions is not None:
            try:
                sessions.remove(session)
            except ValueError:
                pass
            if not sessions:
                del self.idle[addr]

    def close_idle(self) -> None:
        """Close every idle session (new TLS material, or the mesh stops)."""
        for sessions in list(self.idle.values()):
            for session in list(sessions):
                session.close()
        self.idle.clear()

    def all_sessions(self) -> list[Session]:
        return list(self.addr_of)
