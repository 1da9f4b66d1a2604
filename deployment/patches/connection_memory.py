"""What an open connection keeps in an instance's memory, cut where tracemalloc showed it (one worker holding
1,000 WebSocket clients through HAProxy: app RSS added per connection went from 64 KB to 51 KB):

- The Engine.IO ping: python-engineio spawns a greenlet per ping cycle that sleeps `PING_INTERVAL` seconds,
  so every connection always holds one sleeping greenlet (its saved stack and timer): about 9 KB. Under
  gevent a plain timer of the event loop does the same wait; the ping is sent from a short-lived greenlet.
- The read buffer of each HTTP connection (pywsgi: 8 KB) stays allocated for a WebSocket's whole life:
  `READ_BUFFER_SIZE` (default 4096) instead. Only how reads are made changes, not what they return: a
  larger message is read straight into its own bytes, and messages that arrive together fill fewer
  buffers per recv(). 2048 saved 2 KB more per connection but cost about 3% of polling throughput.
- gevent-websocket's handler keeps the parsed request headers (an email.message.Message) while the
  WebSocket is open: the environ has them all (HTTP_*), and pywsgi parses the next request's anew.
- python-socketio keeps each connection's first environ (Flask-SocketIO builds every event's `request` from
  it). For a client that started on long-polling, its `wsgi.input` holds the read buffer of an HTTP
  connection the client may have left (pywsgi drops, but never closes it): it gets an empty body instead.
  An Engine.IO handshake is a GET without a body, so handlers see the same request.

Also, on every connection's reads (HTTP and, after the upgrade, WebSocket): gevent's recv() tries the socket
first and waits only on EAGAIN, so each message read cost two recv() calls, one of them failing; here one
(ReadAfterWait).

Relies on CPython's io and socket internals (a makefile()'s io.BufferedReader reads through the `readinto` of
its raw socket.SocketIO, looked up on the instance), on gevent's socket internals (`_wait`, `_read_event`) and on
pywsgi's `rfile` keyword: VERIFIED pins Python as well as the libraries.
"""

import io
import time

import gevent
from engineio import packet
from engineio import socket as engineio_socket

from deployment.patches import pins

try:
    from geventwebsocket.handler import WebSocketHandler
except ImportError:  # without gevent-websocket (docs/configuration.md#without-gevent-websocket)
    WebSocketHandler = None
else:
    PYWSGI_INIT = WebSocketHandler.__init__
    GEVENT_WEBSOCKET_RUN = WebSocketHandler.run_websocket

ENGINEIO_SCHEDULE_PING = engineio_socket.Socket.schedule_ping


def schedule_ping(sock):
    """engineio's Socket.schedule_ping, with a timer of gevent's loop instead of a sleeping greenlet."""
    if sock.server.async_mode != "gevent":
        return ENGINEIO_SCHEDULE_PING(sock)
    if sock.last_ping:  # as engineio: only once the previous ping was answered
        sock.last_ping = None
        timer = gevent.get_hub().loop.timer(sock.server.ping_interval)
        timer.start(gevent.spawn_raw, send_ping, sock, timer)


def send_ping(sock, timer):
    """What engineio's Socket._send_ping does after its sleep (in a greenlet: send() may close the socket)."""
    timer.close()
    if not sock.closing and not sock.closed:
        sock.last_ping = time.time()
        sock.send(packet.Packet(packet.PING))


class ReadAfterWait:
    """A connection's reads from its socket (the raw reads under its buffered reader). gevent's recv() tries the
    socket first and waits only on EAGAIN, so each message read cost two recv() calls, one of them failing: a
    read that leaves the kernel's buffer empty makes the next read wait for data first, then make one recv()."""

    __slots__ = ("sock", "drained")

    def __init__(self, sock):
        self.sock = sock
        self.drained = False  # unknown: try first, as gevent does

    def readinto(self, buffer):
        sock = self.sock
        if self.drained:
            sock._wait(sock._read_event)  # what gevent's recv_into does on EAGAIN, with the socket's timeout
        count = sock.recv_into(buffer)
        self.drained = count < len(buffer)
        return count


def read_after_wait(rfile, sock):
    """Give a connection's reader (a gevent socket's makefile()) ReadAfterWait reads; bytes it holds stay first.
    Done as pywsgi's handler starts (handler_init), so a WebSocket keeps it after the upgrade."""
    raw = getattr(rfile, "raw", None)
    if raw is not None and hasattr(sock, "_read_event"):
        raw.readinto = ReadAfterWait(sock).readinto


def handler_init(read_buffer_size):
    def init(self, sock, address, server, rfile=None):
        rfile = rfile or sock.makefile("rb", read_buffer_size)
        read_after_wait(rfile, sock)  # one recv() per request read, not two
        PYWSGI_INIT(self, sock, address, server, rfile)

    init.read_buffer_size = read_buffer_size
    return init


def run_websocket(self):
    vars(self).pop("headers", None)  # back to pywsgi's empty class default; the environ has them as HTTP_*
    return GEVENT_WEBSOCKET_RUN(self)


def install_handler(read_buffer_size):
    if WebSocketHandler is not None:
        WebSocketHandler.__init__ = handler_init(read_buffer_size)
        WebSocketHandler.run_websocket = run_websocket


VERIFIED = {
    "python-engineio": ("4.15.1",),
    "python-socketio": ("5.18.1",),
    "gevent-websocket": ("0.10.1",),
    "gevent": ("26.9.0",),
    "python": ("3.11",),  # io.BufferedReader over socket.SocketIO (ReadAfterWait), see the docstring
}
REPLACES = [
    "engineio.socket.Socket.schedule_ping",
    "geventwebsocket.handler.WebSocketHandler.__init__",
    "geventwebsocket.handler.WebSocketHandler.run_websocket",
    "eio.handlers[connect]",
]
ROWS = [("broadcast", "app_rss_kb_per_conn")]  # the benchmark rows it serves (deployment/patches/README.md)
PROVEN_BY = "tests/deployment/test_connection_memory.py"  # same answers as the library's own code


ASYNC_MODES = ("gevent",)  # the ping timer and pywsgi's handler: gevent only


def install(socketio, app, settings):
    """True: the ping timer, the read buffer size, one recv() per read and the dropped headers and body run."""
    if WebSocketHandler is None:
        return pins.stays_off("connection_memory", "gevent-websocket is not installed")
    engineio_socket.Socket.schedule_ping = schedule_ping
    install_handler(settings.read_buffer_size)

    eio = socketio.server.eio
    handle_connect = eio.handlers["connect"]

    def on_connect(eio_sid, environ, *args):
        environ["wsgi.input"] = io.BytesIO()
        return handle_connect(eio_sid, environ, *args)

    eio.on("connect", on_connect)
    return True
