"""How a packet reaches an open WebSocket. python-engineio queues every packet for a writer greenlet per
connection, which wakes, takes it from the queue with a new timer per wait, and sends it. py-spy on a worker
delivering a 30,000/s broadcast: that hand-off (queue wait, timers, switches) took more of the CPU than the
send() itself. With `WEBSOCKET_DIRECT_SEND` (default true), under gevent-websocket:

- A packet for an idle WebSocket (nothing queued for its writer) goes to an outbox, which the event loop
  empties once it has run every greenlet that was ready: one send() each, in a row (so HAProxy gets them in
  one burst, as from engineio's writers), from the loop itself, no greenlet woken. That send() never waits
  (websocket_speedups.FrameWriter.try_write): if the kernel takes none of a frame, the packet is queued for
  the writer as before; if it takes part, a short greenlet writes the rest while later frames wait their turn.
  So a client that does not read never holds up the others (e.g. a broadcast to 500 clients).
- The writer waits for its queue without a timer: engineio's timeout there is only a fallback, since the
  WebSocket handler queues None when its reader ends, and so does Socket.close().

Same packets, in the same order, as engineio's writer: tests/test_websocket_writes.py.
"""

import gevent
from engineio import packet
from engineio import socket as engineio_socket

from patches.websocket_speedups import FrameWriter

try:
    from geventwebsocket.websocket import Header, WebSocket
except ImportError:  # the simple-websocket variant (bench/run template_simplews): engineio's own path
    WebSocket = None

ENGINEIO_SEND = engineio_socket.Socket.send
ENGINEIO_POLL = engineio_socket.Socket.poll
ENGINEIO_CLOSE = engineio_socket.Socket.close
ENGINEIO_WEBSOCKET_HANDLER = engineio_socket.Socket._websocket_handler


def frame(message):
    """The bytes gevent-websocket's WebSocket.send(message) writes (server frames are not masked)."""
    if isinstance(message, str):
        message, opcode = message.encode(), WebSocket.OPCODE_TEXT
    else:
        message, opcode = bytes(message), WebSocket.OPCODE_BINARY
    return Header.encode_header(True, opcode, b"", len(message), 0) + message


def websocket_handler(sock, ws):
    """engineio's handler of an open WebSocket; while it runs, send() can reach the WebSocket's FrameWriter.
    install() sets it only together with send(), so it runs only with WEBSOCKET_DIRECT_SEND."""
    websocket = getattr(ws, "_sock", None)
    writer = getattr(getattr(getattr(websocket, "stream", None), "write", None), "__self__", None)
    if isinstance(writer, FrameWriter):
        sock.direct = (websocket, writer)
    try:
        return ENGINEIO_WEBSOCKET_HANDLER(sock, ws)
    finally:
        sock.direct = None


class Outbox:
    """Frames for idle WebSockets, sent by the event loop once it has run every greenlet that was ready."""

    def __init__(self):
        self.items = []

    def add(self, sock, direct, pkt):
        if not self.items:
            gevent.get_hub().loop.run_callback(self.flush)
        self.items.append((sock, direct, pkt))

    def flush(self):  # runs in the event loop: nothing here may wait
        items, self.items = self.items, []
        for sock, (websocket, writer), pkt in items:
            try:
                sent = not sock.queue.qsize() and not websocket.closed and writer.try_write(frame(pkt.encode()))
            except Exception:  # the writer meets the same error, and ends the connection as engineio does
                sent = False
            if not sent:
                sock.queue.put(pkt)

    def move_to_queue(self, sock):
        """A socket's packets still here go to its writer's queue, in order (before close() queues None)."""
        mine = [item for item in self.items if item[0] is sock]
        if mine:
            self.items = [item for item in self.items if item[0] is not sock]
            for _, _, pkt in mine:
                sock.queue.put(pkt)


OUTBOX = Outbox()


def send(sock, pkt):
    """engineio's Socket.send; a packet for an idle WebSocket goes to the outbox instead of its writer."""
    direct = sock.direct
    if direct is None or not sock.upgraded or sock.queue.qsize():
        return ENGINEIO_SEND(sock, pkt)
    if not sock.check_ping_timeout():
        return
    OUTBOX.add(sock, direct, pkt)
    sock.server.logger.info(
        "%s: Sending packet %s data %s",
        sock.sid,
        packet.packet_names[pkt.packet_type],
        pkt.data if not isinstance(pkt.data, bytes) else "<binary>",
    )


def close(sock, *args, **kwargs):
    """engineio's Socket.close, after the socket's packets in the outbox: its CLOSE goes after them."""
    if sock.direct is not None:
        OUTBOX.move_to_queue(sock)
        sock.direct = None
    return ENGINEIO_CLOSE(sock, *args, **kwargs)


def poll(sock):
    """engineio's Socket.poll; the WebSocket writer (once upgraded, under gevent) waits without a timer."""
    if not sock.upgraded or sock.server.async_mode != "gevent":
        return ENGINEIO_POLL(sock)
    queue = sock.queue
    first = queue.get()
    queue.task_done()
    if first is None:
        return []
    packets = [first]
    while queue.qsize():  # what else is waiting, without raising Empty at the end as engineio does
        pkt = queue.get_nowait()
        queue.task_done()
        if pkt is None:
            queue.put(None)
            break
        packets.append(pkt)
    return packets


VERIFIED = {"python-engineio": ("4.15.1",), "gevent-websocket": ("0.10.1",), "gevent": ("26.9.0",)}
REPLACES = [
    "engineio.socket.Socket._websocket_handler",
    "engineio.socket.Socket.send",
    "engineio.socket.Socket.poll",
    "engineio.socket.Socket.close",
]
ROWS = [("broadcast", "app_cpu_ms_per_1000")]  # the benchmark rows it serves (patches/README.md)
PROVEN_BY = "tests/test_websocket_writes.py"  # same answers as the library's own code


def install(socketio, app, settings):
    """Patch engineio's Socket (process-wide) per WEBSOCKET_DIRECT_SEND; false restores engineio's own path."""
    enabled = settings.websocket_direct_send and WebSocket is not None
    engineio_socket.Socket.direct = None
    engineio_socket.Socket.send = send if enabled else ENGINEIO_SEND
    engineio_socket.Socket.poll = poll if enabled else ENGINEIO_POLL
    engineio_socket.Socket.close = close if enabled else ENGINEIO_CLOSE
    engineio_socket.Socket._websocket_handler = websocket_handler if enabled else ENGINEIO_WEBSOCKET_HANDLER
