"""gevent-websocket 0.10.1 (its last release) does more work than needed on every WebSocket frame. Three fixes,
each giving the same bytes as the original (tests/deployment/test_websocket_speedups.py):

- UTF-8 validation of text frames: gevent-websocket uses wsaccel's C validator by itself once wsaccel is
  installed (requirements.txt), instead of a Python loop over every byte (run twice per message).
- Header.unmask_payload XORs each client frame with its mask byte by byte in Python: wsaccel's C masker.
- Stream.write is gevent's sendall(), which asks the kernel for SO_SNDBUF (one getsockopt syscall) on every
  frame: one send() instead, and sendall() only for what a full socket buffer leaves over (FrameWriter, which
  also lets deployment/patches/websocket_writes.py send a frame without waiting).

It relies on gevent-websocket's classes and gevent's socket (send() with a timeout), pinned in VERIFIED, and
on nothing of CPython's own: no "python" pin. (The reads a connection makes, one recv() per read, are
connection_memory's: they rely on CPython's io and socket internals, and connection_memory pins Python.)
"""

import gevent
from gevent.lock import Semaphore

from deployment.patches import pins

try:
    from geventwebsocket import websocket as gws
    from wsaccel.xormask import XorMaskerSimple
except ImportError:  # without gevent-websocket (docs/configuration.md#without-gevent-websocket): nothing to speed up
    gws = None


def mask_payload(header, payload):
    return bytearray(XorMaskerSimple(header.mask).process(bytes(payload)))


def send_whole(sock, data):
    """gevent's sendall() without its getsockopt(SO_SNDBUF) per call: one send(), sendall() only for the rest."""
    sent = sock.send(data)
    if sent < len(data):
        sock.sendall(memoryview(data)[sent:])


class FrameWriter:
    """One WebSocket's writes: one send() per frame, and frames whole and in order, whichever greenlet sends."""

    __slots__ = ("sock", "busy")

    def __init__(self, sock):
        self.sock = sock
        self.busy = Semaphore()  # held while a frame is still going out

    def write(self, data):
        """gevent-websocket's raw_write (engineio's writer greenlet, close frames): waits for room, as sendall()."""
        with self.busy:
            send_whole(self.sock, data)

    def try_write(self, data):
        """Send now without ever waiting; False if nothing went out (the caller queues the frame instead)."""
        if self.busy.locked():
            return False
        try:
            sent = self.sock.send(data, 0, 0.0)  # timeout 0: EAGAIN raises instead of waiting
        except OSError:  # a full buffer, or a broken connection that engineio's writer will meet and close
            return False
        if sent < len(data):  # the kernel took part: a greenlet writes the rest, later frames wait for it
            self.busy.acquire()
            gevent.spawn_raw(self.write_rest, memoryview(data)[sent:])
        return True

    def write_rest(self, rest):
        try:
            self.sock.sendall(rest)
        except OSError:
            pass  # broken connection: the next read or write fails the same way and closes it
        finally:
            self.busy.release()


def stream_init(stream, handler):
    stream.handler = handler
    stream.read = handler.rfile.read
    stream.write = FrameWriter(handler.socket).write


VERIFIED = {"gevent-websocket": ("0.10.1",), "wsaccel": ("0.6.7",), "gevent": ("26.9.0",)}
REPLACES = [
    "geventwebsocket.websocket.Header.mask_payload",
    "geventwebsocket.websocket.Header.unmask_payload",
    "geventwebsocket.websocket.Stream.__init__",
]
ROWS = [
    ("broadcast", "app_cpu_ms_per_1000"),
    ("echo_ws", "app_cpu_ms_per_1000"),
]  # the benchmark rows it serves (deployment/patches/README.md)
PROVEN_BY = "tests/deployment/test_websocket_speedups.py"  # same answers as the library's own code


ASYNC_MODES = ("gevent",)  # gevent-websocket's handler runs under gevent's pywsgi only


def install(socketio=None, app=None, settings=None):
    """True: gevent-websocket's frames are masked by wsaccel and written by FrameWriter from now on."""
    if gws is None:
        return pins.stays_off("websocket_speedups", "gevent-websocket or wsaccel is not installed")
    gws.Header.mask_payload = gws.Header.unmask_payload = mask_payload
    gws.Stream.__init__ = stream_init
    return True
