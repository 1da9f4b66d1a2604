"""With ASYNC_HANDLERS=true (the default), python-socketio spawns a greenlet for every event, so a handler that
waits (I/O, call(), sleep) never holds up the client's next events. On a WebSocket echo that greenlet (create,
schedule, switch, end) is about a tenth of a worker's CPU, and most handlers never wait at all.
With INLINE_HANDLERS (default true), an event that arrives on an open WebSocket runs in the greenlet that read
it; a loop callback armed for the handler's duration runs only if the handler waits (the loop runs only when
the running greenlet waits), and then starts a new greenlet that reads the connection from there on, with a
greenlet per event as before. So waiting handlers keep python-socketio's behaviour; others cost no greenlet.

- call() from a handler works: the new reader receives the client's answer.
- The connection ends (disconnect handlers run) when its reader sees it end, even if the handler that waited
  never returns; its socket is closed once that handler returns (tests/test_inline_handlers.py).
- Long-polling requests keep a greenlet per event (a POST must not wait for its handlers), a reused one
  (patches/event_greenlets.py, IDLE_EVENT_GREENLETS).
"""

import logging

import gevent
from engineio import exceptions as engineio_exceptions
from engineio import packet as engineio_packet
from engineio import socket as engineio_socket
from gevent import getcurrent
from gevent.event import AsyncResult

from patches.event_greenlets import EventGreenlets

log = logging.getLogger(__name__)

READERS = {}  # the greenlet running engineio's WebSocket handler -> its Reader


class Reader:
    """How one WebSocket connection is read while engineio's handler runs in `owner`."""

    __slots__ = ("sock", "read", "owner", "busy", "successor", "ended")

    def __init__(self, sock, ws):
        self.sock = sock
        self.read = ws.wait  # engineio's read of the next message (its gevent WebSocketWSGI)
        self.owner = getcurrent()
        self.busy = False  # the owner is running an event handler
        self.successor = None  # the greenlet reading since a handler waited
        self.ended = None  # set by the successor when the connection ends
        ws.wait = self.wait  # engineio's read loop (Socket._websocket_handler) calls ws.wait()

    def wait(self):
        if self.successor is None:
            return self.read()
        return self.ended.get()  # the successor reads now: the owner's loop ends with the connection

    def run(self, handler, *args):
        """Run an event handler in the reading greenlet; if it waits, hand the reading to a new greenlet."""
        self.busy = True
        waited = gevent.get_hub().loop.run_callback(self.handler_waits)
        try:
            handler(*args)
        except Exception:  # a spawned handler's error ends only that greenlet: never the connection
            log.exception("error in a Socket.IO event handler")
        finally:
            self.busy = False
            waited.stop()

    def handler_waits(self):  # runs in the event loop, only when the owner waits: nothing here may wait
        if self.busy and self.successor is None:
            self.ended = AsyncResult()
            self.successor = gevent.spawn_raw(self.read_on)

    def read_on(self):
        """engineio's read loop (python-engineio socket.py, _websocket_handler), and its ending of the connection."""
        sock = self.sock
        server = sock.server
        try:
            while True:
                try:
                    data = self.read()
                    if data and len(data) > server.max_http_buffer_size:
                        raise ValueError("packet is too large")
                except Exception as exc:
                    if not sock.closed:
                        server.logger.info('%s: Unexpected error "%s", closing connection', sock.sid, exc)
                    break
                if data is None:  # closed by the client
                    break
                try:
                    sock.receive(engineio_packet.Packet(encoded_packet=data))
                except engineio_exceptions.UnknownPacketError:
                    pass
                except engineio_exceptions.SocketIsClosedError:
                    server.logger.info("Receive error -- socket is closed")
                    break
                except Exception:
                    server.logger.exception("Unknown receive error")
                    break
            sock.queue.put(None)  # the writer sends what is queued, then closes the WebSocket
            sock.close(wait=False, abort=True)  # disconnect handlers run now, not when the waiting handler returns
        finally:
            self.ended.set(None)


def websocket_reading(sock, ws):
    """The Reader for engineio's handler of an open WebSocket, or None when events get a greenlet each."""
    if not getattr(sock.server, "inline_handlers", False) or not hasattr(ws, "wait"):
        return None
    reader = READERS[getcurrent()] = Reader(sock, ws)
    return reader


def stop_reading(reader):
    if reader is not None:
        READERS.pop(reader.owner, None)
        vars(reader.read.__self__).pop("wait", None)  # the ws and its Reader referred to each other


def handle_event(server, eio_sid, namespace, id, data):
    """python-socketio's Server._handle_event (with ASYNC_HANDLERS): in a WebSocket's reading greenlet the
    handler runs right there; elsewhere in a greenlet of its own, a reused one (event_greenlets.py) if kept."""
    namespace = namespace or "/"
    sid = server.manager.sid_from_eio_sid(eio_sid, namespace)
    server.logger.info('received event "%s" from %s [%s]', data[0], sid, namespace)
    if not server.manager.is_connected(sid, namespace):
        server.logger.warning("%s is not connected to namespace %s", sid, namespace)
        return None
    handler, args = server._handle_event_internal, (server, sid, eio_sid, data, namespace, id)
    if not server.async_handlers:  # turned off after install (Flask-SocketIO's test client does)
        handler(*args)
        return None
    reader = READERS.get(getcurrent())
    if reader is not None and reader.successor is None:
        reader.run(handler, *args)
    elif server.event_greenlets is not None:
        server.event_greenlets.spawn(handler, *args)
    else:
        server.start_background_task(handler, *args)
    return None


VERIFIED = {"python-socketio": ("5.18.1",), "python-engineio": ("4.15.1",), "gevent": ("26.9.0",)}
REPLACES = ["server._handle_event"]


def install(socketio, app, settings):
    install_on(socketio.server, settings)


def install_on(server, settings):
    """INLINE_HANDLERS and IDLE_EVENT_GREENLETS for this python-socketio server (with ASYNC_HANDLERS=false
    every handler runs in its reader anyway)."""
    from patches import websocket_writes  # its handler of open WebSockets lets events run in the reader

    gevent_handlers = server.async_handlers and server.eio.async_mode == "gevent"
    reader_patched = engineio_socket.Socket._websocket_handler is websocket_writes.websocket_handler
    server.eio.inline_handlers = gevent_handlers and settings.inline_handlers and reader_patched
    keep = settings.idle_event_greenlets if gevent_handlers else 0
    server.event_greenlets = EventGreenlets(keep) if keep else None
    if server.eio.inline_handlers or server.event_greenlets is not None:
        server._handle_event = handle_event.__get__(server)
    else:
        server.__dict__.pop("_handle_event", None)
