"""An idle WebSocket without a greenlet. gevent-websocket reads a WebSocket in the greenlet that handled its
HTTP upgrade, which waits in recv() for the connection's whole life: with its C stack copied out, its Python
frames (from gunicorn's worker down to engineio's read loop) and its wait, that greenlet was the largest part
of an idle connection's memory (bench/memory_breakdown.py, docs/performance.md#memory-per-connection).

Here, once the WebSocket is upgraded, its reader reads while bytes are there, and when the next read would
wait (nothing buffered, nothing in the kernel) it parks instead: an I/O watcher of gevent's loop waits for the
socket to become readable, and the greenlet returns, as when a connection ends, except that the socket stays
open (its raw reader holds it open, as the standard library's makefile() does). While parked, the WebSocket
keeps no read buffer (a new one is made when bytes arrive) and no reference to its upgrade request's environ.
When bytes arrive, a kept greenlet (ReaderGreenlets) reads them with python-engineio's loop
(deployment/patches/websocket_writes.py read_packets) until it would wait again; when the connection ends, it does what
gevent-websocket's and pywsgi's handlers do at the end of a WebSocket: close it, drop it from the server's
clients, close the socket.

The packets a client sends are read, in order, by one greenlet at a time, as before: the watcher is stopped
while a reader runs. Handlers see the same `request` (python-socketio's saved environ), session and rooms.
gunicorn's WORKER_CONNECTIONS no longer counts parked WebSockets (they hold no greenlet of its pool): HAProxy's
APP_MAXCONN still caps the connections of an instance. gunicorn's access log (ACCESS_LOG, off by default) logs
the upgrade request when its greenlet returns, that is when the WebSocket first parks, not when it closes.

Needs websocket_writes' writer on demand (WEBSOCKET_DIRECT_SEND and WEBSOCKET_WRITER_ON_DEMAND, the default)
and connection_memory's reads (connection_memory.ReadAfterWait):
without them it stays off, one log line (REQUIRES, enforced by deployment/operations/speedups.py; install() says
so for WEBSOCKET_WRITER_ON_DEMAND=false). Same packets, same order, same ends as the library's own code:
tests/deployment/test_idle_websockets.py.

Relies on CPython's io internals (io.BufferedReader's peek() and detach(), a raw socket.SocketIO whose `readinto`
is looked up on the instance and may answer None for "would block", a new BufferedReader over the kept raw
reader), on gevent's socket internals (`_sock`) and on pywsgi's and gevent-websocket's handlers: VERIFIED pins
Python as well as the libraries.
"""

import io

import gevent
import greenlet

from deployment.patches import pins, websocket_writes
from deployment.patches.connection_memory import ReadAfterWait

try:
    from geventwebsocket.handler import Client, WebSocketHandler
except ImportError:  # without gevent-websocket (docs/configuration.md#without-gevent-websocket): nothing to park
    WebSocketHandler = None


class IdleReader:
    """One upgraded WebSocket's reading, between its handler's greenlet and the greenlets that resume it."""

    __slots__ = ("sock", "ws", "handler", "rfile", "raw", "reads", "watcher", "would_wait", "socket")

    def __init__(self, sock, ws, handler, reads):
        self.sock, self.ws, self.handler, self.reads = sock, ws, handler, reads
        self.rfile = handler.rfile
        self.raw = self.rfile.raw
        self.watcher = None
        self.would_wait = False
        self.socket = None  # the gevent socket, once the handler has let go of it (run_websocket)

    def idle(self):
        """True if the next read would wait: nothing buffered in the reader, nothing in the kernel (one
        non-blocking recv() at most, none if the last one emptied the kernel's buffer)."""
        raw = self.raw
        self.would_wait = False
        raw.readinto = self.read_without_wait
        try:
            self.rfile.peek(1)  # what is buffered, else one raw read that never waits
        except Exception:  # noqa: BLE001 - a broken connection: the read loop meets the same error and ends
            return False
        finally:
            raw.readinto = self.reads.readinto
        return self.would_wait

    def read_without_wait(self, buffer):
        reads = self.reads
        if reads.drained:  # the last recv() emptied the kernel's buffer: the watcher says when more comes
            self.would_wait = True
            return None  # a raw read's "would block": peek() returns what it has, here nothing
        try:
            count = reads.sock._sock.recv_into(buffer)  # the non-blocking socket under gevent's
        except BlockingIOError:
            self.would_wait = True
            return None
        reads.drained = count < len(buffer)
        return count

    def park(self, drop_buffer=True):
        if self.watcher is None:
            self.watcher = gevent.get_hub().loop.io(self.reads.sock.fileno(), 1)
        self.watcher.start(self.wake)
        if drop_buffer:  # not while the handler's greenlet still runs: pywsgi reads its reader's state
            self.drop_buffer()

    def drop_buffer(self):
        """A parked WebSocket's reader has nothing buffered: keep its raw reader, not its buffer (wake() makes a
        new one). The socket stays open: the raw reader is what holds it (makefile)."""
        if self.rfile is not None:
            self.rfile.detach()
            self.rfile = None
            self.set_read(None)

    def set_read(self, read):
        websocket = self.ws._sock  # gevent-websocket's WebSocket reads with raw_read, its stream's read
        if not websocket.closed:  # (close() drops both)
            websocket.raw_read = websocket.stream.read = read

    def let_go(self):
        """Once the handler's greenlet has ended (pywsgi dropped its reader): drop the buffer if still parked,
        and the upgrade request's environ, which only that greenlet needed (handlers get python-socketio's)."""
        handler = self.handler
        if handler is None:  # ended already
            return
        if "rfile" in vars(handler):  # the greenlet has not ended yet: look again on the loop's next turn
            gevent.get_hub().loop.run_callback(self.let_go)
            return
        handler.environ = self.ws._sock.environ = self.ws.environ = None
        if self.watcher.active:
            self.drop_buffer()

    def wake(self):  # in the event loop: bytes arrived
        self.watcher.stop()
        if self.rfile is None:
            self.rfile = io.BufferedReader(self.raw, READ_BUFFER_SIZE[0])
            self.set_read(self.rfile.read)
        self.reads.drained = False  # they are there: read without waiting for readability first
        READERS.run(self)

    def resume(self):
        ended = True
        try:
            if websocket_writes.read_packets(self.sock, self.ws, self.idle):
                ended = False
                self.park()
                return
            websocket_writes.end_reading(self.sock)
        finally:
            if ended:
                self.end()

    def end(self):
        """What gevent-websocket's run_websocket and pywsgi's handle() do when a WebSocket ends."""
        if self.watcher is not None:
            self.watcher.close()
        self.sock.direct = None
        server = self.sock.server
        if self.sock.closed and server.sockets.get(self.sock.sid) is self.sock:
            del server.sockets[self.sock.sid]  # as engineio's handle_request does once a WebSocket ends
        handler, self.handler = self.handler, None
        socket, self.socket = self.socket, None
        try:
            end_websocket(handler)
        finally:
            close_socket(socket)
        self.rfile = self.raw = None


def close_socket(socket):
    """What pywsgi's WSGIHandler.handle() does with a connection's socket when its last request ends."""
    if socket is None:
        return
    real = getattr(socket, "_sock", None)
    try:
        if real:
            try:
                real.recv(16384)  # as pywsgi: read out what is left, so that the close sends no RST
            finally:
                real.close()
        socket.close()
    except OSError:
        pass


READ_BUFFER_SIZE = [4096]  # connection_memory's READ_BUFFER_SIZE, set by install()


class ReaderGreenlets:
    """The greenlets that read woken WebSockets, kept for the next one: a new greenlet costs about 12 µs here
    (CPython gives each its own frame stack, mapped when it starts and unmapped when it ends), handing a kept
    one the next reader about 1 µs. At most `keep` wait; more are made while more WebSockets are read at once."""

    def __init__(self, keep=64):
        self.keep = keep
        self.waiting = []  # kept greenlets, each switched out in serve() until run() hands it a reader

    def run(self, reader):  # in the event loop (IdleReader.wake)
        kept = self.waiting.pop() if self.waiting else None
        if kept:  # (a greenlet is false once dead)
            kept.switch(reader)  # it reads until it waits for something, then the loop goes on
        else:
            gevent.spawn_raw(self.serve, reader)

    def serve(self, reader):
        hub = gevent.get_hub()
        while isinstance(reader, IdleReader):
            reader.resume()
            reader = None  # not kept alive while this greenlet waits
            if len(self.waiting) >= self.keep:
                return
            self.waiting.append(greenlet.getcurrent())
            reader = hub.switch()  # only run() switches back here, with the next reader


READERS = ReaderGreenlets()


def park_when_idle(sock, ws):
    """websocket_writes' hook, in the upgrade's greenlet once the WebSocket is open: reads until the next read
    would wait, then parks it and returns True (the greenlet then returns without closing anything); False
    once the connection ended (the caller ends it as engineio does) or if the reads are not ReadAfterWait's."""
    websocket = getattr(ws, "_sock", None)
    handler = getattr(websocket, "handler", None)
    rfile = getattr(handler, "rfile", None)
    reads = getattr(getattr(getattr(rfile, "raw", None), "readinto", None), "__self__", None)
    if not isinstance(reads, ReadAfterWait):
        return False
    reader = IdleReader(sock, ws, handler, reads)
    if not websocket_writes.read_packets(sock, ws, reader.idle):
        return False
    handler.idle_reader = reader  # run_websocket hands the socket over instead of closing it
    return True


def end_websocket(handler):
    """The end of gevent-websocket 0.10.1's WebSocketHandler.run_websocket (its finally clause)."""
    del handler.server.clients[handler.client_address]
    if not handler.websocket.closed:
        handler.websocket.close()
    if handler.environ is not None:  # else IdleReader.let_go() dropped it
        handler.environ.update({"wsgi.websocket": None})
    handler.websocket = None


def run_websocket(self):
    """gevent-websocket 0.10.1's WebSocketHandler.run_websocket, line for line (with connection_memory's drop of
    the parsed headers), except that a parked WebSocket is handed to its IdleReader instead of being closed."""
    vars(self).pop("headers", None)  # back to pywsgi's empty class default; the environ has them as HTTP_*
    if getattr(self, "prevent_wsgi_call", False):
        return

    # In case WebSocketServer is not used
    if not hasattr(self.server, "clients"):
        self.server.clients = {}

    reader = None
    try:
        self.server.clients[self.client_address] = Client(self.client_address, self.websocket)
        list(self.application(self.environ, lambda s, h, e=None: []))
        reader = vars(self).pop("idle_reader", None)
    finally:
        if reader is None:
            end_websocket(self)
        else:
            # pywsgi's handle() then ends without closing: no socket; gevent's server close()s the socket after
            # it, which only marks it closed while the buffered reader (kept by the WebSocket) holds it open
            reader.socket, self.socket = self.socket, None
            self.close_connection = True
            reader.park(drop_buffer=False)
            gevent.get_hub().loop.run_callback(reader.let_go)


VERIFIED = {
    "gevent-websocket": ("0.10.1",),
    "gevent": ("26.9.0",),
    "python-engineio": ("4.15.1",),
    "python": ("3.11",),  # io.BufferedReader and socket.SocketIO internals, see the docstring
}
REPLACES = ["geventwebsocket.handler.WebSocketHandler.run_websocket"]  # connection_memory's, when this is off
REQUIRES = ("connection_memory", "websocket_writes")  # off without them (one log line)
# the benchmark rows of this module's A/B (deployment/patches/README.md)
ROWS = [("memory_curve_5000", "app_kb_per_conn"), ("memory_curve_10000", "app_kb_per_conn")]
PROVEN_BY = "tests/deployment/test_idle_websockets.py"  # same answers as the library's own code


ASYNC_MODES = ("gevent",)


def install(socketio, app, settings):
    """True if WebSockets now park when idle: on top of websocket_writes' writer on demand (on its FrameWriter) and
    connection_memory's reads (see above); else one line, False."""
    websocket_writes.PARK_WHEN_IDLE[0] = None
    if WebSocketHandler is None:
        return pins.stays_off("idle_websockets", "gevent-websocket is not installed")
    if not settings.websocket_writer_on_demand:
        return pins.stays_off(
            "idle_websockets",
            "WEBSOCKET_WRITER_ON_DEMAND=false: it parks WebSockets only with websocket_writes' writer on demand",
        )
    writes = websocket_writes.installed_on_demand()
    reads = getattr(WebSocketHandler.__init__, "read_buffer_size", None) is not None
    if not (writes and reads):  # the installer checks REQUIRES: this is for a direct call
        return pins.stays_off(
            "idle_websockets",
            "it needs connection_memory and websocket_writes' writer on demand "
            "(WEBSOCKET_DIRECT_SEND, WEBSOCKET_WRITER_ON_DEMAND); a WebSocket keeps its greenlet",
        )
    WebSocketHandler.run_websocket = run_websocket
    READ_BUFFER_SIZE[0] = settings.read_buffer_size
    websocket_writes.PARK_WHEN_IDLE[0] = park_when_idle
    return True
