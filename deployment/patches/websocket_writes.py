"""How a packet reaches an open WebSocket. python-engineio queues every packet for a writer greenlet per
connection, which wakes, takes it from the queue with a new timer per wait, and sends it. py-spy on a worker
delivering a 30,000/s broadcast: that hand-off (queue wait, timers, switches) took more of the CPU than the
send() itself. With `WEBSOCKET_DIRECT_SEND` (default true), under gevent-websocket:

- A packet for an idle WebSocket (nothing queued for its writer) goes to an outbox, which the event loop
  empties once it has run every greenlet that was ready: one send() each, in a row (so HAProxy gets them in
  one burst, as from engineio's writers), from the loop itself, no greenlet woken. That send() never waits
  (FrameWriter.try_write): if the kernel takes none of a frame, the packet is queued for
  the writer as before; if it takes part, a short greenlet writes the rest while later frames wait their turn.
  So a client that does not read never holds up the others (e.g. a broadcast to 500 clients).
- The writer waits for its queue as engineio's does, at most PING_INTERVAL + PING_TIMEOUT seconds (then
  QueueEmpty, and it closes the WebSocket), and takes what else is queued without raising Empty at the end.
- With `WEBSOCKET_WRITER_ON_DEMAND` (default true), the writer greenlet runs only while there is something to
  write: started when a packet goes to the queue (the outbox could not send it, or packets were queued before
  the upgrade), it ends once the queue is empty, and Socket.close() starts one that waits for its None, as
  engineio's does. An idle WebSocket then holds one greenlet (its reader) instead of two: a greenlet's saved
  stack, its frames and its wait cost about 7 KB each (bench/memory_breakdown.py,
  docs/performance.md#memory-per-connection).

A send() or close() from a thread other than the one whose event loop serves the socket (a thread of the
app's own, gevent's threadpool) is run by a greenlet of that loop while the caller waits for it, as if made
there: the outbox, the writer and their greenlets belong to that loop. (engineio's own send() puts the packet
in the queue from the caller's thread; its writer greenlet takes it from there.)

Every WebSocket frame goes out through a FrameWriter (gevent-websocket's Stream.__init__ replaced): one send()
per frame instead of gevent's sendall(), which asks the kernel for SO_SNDBUF on every call, and sendall() only
for what a full socket buffer leaves over; frames whole and in order whichever greenlet sends, and try_write(),
the send that never waits, for the outbox. Relies on engineio's Socket, gevent's queue, loop and socket (send()
with a timeout), gevent-websocket's frames and Stream (VERIFIED), and on nothing of CPython's own: no "python"
pin.

Same packets, in the same order, as engineio's writer: tests/deployment/test_websocket_writes.py.
"""

import logging

import gevent
from engineio import exceptions, packet
from engineio import socket as engineio_socket
from gevent.lock import Semaphore
from gevent.monkey import get_original
from gevent.queue import Empty

from deployment.patches import pins

try:
    from geventwebsocket.websocket import Header, Stream, WebSocket
except ImportError:  # without gevent-websocket (docs/configuration.md#without-gevent-websocket): engineio's own path
    WebSocket = None

ENGINEIO_SEND = engineio_socket.Socket.send
ENGINEIO_POLL = engineio_socket.Socket.poll
ENGINEIO_CLOSE = engineio_socket.Socket.close
ENGINEIO_WEBSOCKET_HANDLER = engineio_socket.Socket._websocket_handler
STREAM_INIT = Stream.__init__ if WebSocket is not None else None
THREAD_IDENT = get_original("_thread", "get_ident")  # the OS thread's, not the greenlet's under monkey patching
ALLOCATE_LOCK = get_original("_thread", "allocate_lock")  # a lock that blocks the OS thread

log = logging.getLogger("patches")


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
        if sock.direct is not None and WRITER_ON_DEMAND[0]:
            return on_demand_handler(sock, ws)
        return ENGINEIO_WEBSOCKET_HANDLER(sock, ws)
    finally:
        if sock.writer_ws is None:  # else parked: deployment/patches/idle_websockets.py ends it later
            sock.direct = None


WRITER_ON_DEMAND = [True]  # WEBSOCKET_WRITER_ON_DEMAND, set by install()
PARK_WHEN_IDLE = [None]  # deployment/patches/idle_websockets.py's park_when_idle(sock, ws), when it is on


def installed_on_demand():
    """True if engineio's Socket runs on_demand_handler (direct send and the writer on demand)."""
    return engineio_socket.Socket._websocket_handler is websocket_handler and WRITER_ON_DEMAND[0]


def websocket_wait(sock, ws):
    data = ws.wait()
    if data and len(data) > sock.server.max_http_buffer_size:
        raise ValueError("packet is too large")
    return data


def on_demand_handler(self, ws):
    """python-engineio 4.15.1's Socket._websocket_handler, line for line, except that its writer greenlet is
    started on demand (wake_writer) instead of once for the connection's whole life, and that its reading loop
    (read_packets) may hand an idle WebSocket to deployment/patches/idle_websockets.py (PARK_WHEN_IDLE)."""

    # try to set a socket timeout matching the configured ping interval and timeout
    for attr in ["_sock", "socket"]:  # pragma: no cover
        if hasattr(ws, attr) and hasattr(getattr(ws, attr), "settimeout"):
            getattr(ws, attr).settimeout(self.server.ping_interval + self.server.ping_timeout)

    if self.connected:
        # the socket was already connected, so this is an upgrade
        self.upgrading = True  # hold packet sends during the upgrade

        pkt = websocket_wait(self, ws)
        decoded_pkt = packet.Packet(encoded_packet=pkt)
        if decoded_pkt.packet_type != packet.PING or decoded_pkt.data != "probe":
            self.server.logger.info("%s: Failed websocket upgrade, no PING packet", self.sid)
            self.upgrading = False
            return []
        ws.send(packet.Packet(packet.PONG, data="probe").encode())
        self.queue.put(packet.Packet(packet.NOOP))  # end poll

        pkt = websocket_wait(self, ws)
        decoded_pkt = packet.Packet(encoded_packet=pkt)
        if decoded_pkt.packet_type != packet.UPGRADE:
            self.upgraded = False
            self.server.logger.info(
                ("%s: Failed websocket upgrade, expected UPGRADE packet, received %s instead."), self.sid, pkt
            )
            self.upgrading = False
            return []
        self.upgraded = True
        self.upgrading = False
    else:
        self.connected = True
        self.upgraded = True

    # engineio starts its writer here; on demand, only for what is queued already
    self.writer_ws, self.writer_task, self.writer_done = ws, None, False
    try:
        wake_writer(self)

        self.server.logger.info("%s: Upgrade to websocket successful", self.sid)

        park_when_idle = PARK_WHEN_IDLE[0]
        if park_when_idle is not None and park_when_idle(self, ws):
            return []  # parked: its IdleReader reads on, and ends it (end_reading), in greenlets of its own
        read_packets(self, ws)
    except BaseException:
        self.writer_ws, self.writer_done = None, True
        raise
    end_reading(self)
    return []


def read_packets(self, ws, idle=None):
    """engineio's reading loop (in its _websocket_handler); returns True if it stopped because idle() said the
    next read would wait, False once the connection ended."""
    while True:
        if idle is not None and idle():
            return True
        p = None
        try:
            p = websocket_wait(self, ws)
        except Exception as e:
            # if the socket is already closed, we can assume this is a downstream error of that
            if not self.closed:  # pragma: no cover
                self.server.logger.info('%s: Unexpected error "%s", closing connection', self.sid, str(e))
            break
        if p is None:
            # connection closed by client
            break
        pkt = packet.Packet(encoded_packet=p)
        try:
            self.receive(pkt)
        except exceptions.UnknownPacketError:  # pragma: no cover
            pass
        except exceptions.SocketIsClosedError:  # pragma: no cover
            self.server.logger.info("Receive error -- socket is closed")
            break
        except:  # noqa: E722  # pragma: no cover
            # if we get an unexpected exception we log the error and exit the connection properly
            self.server.logger.exception("Unknown receive error")
            break
    return False


def end_reading(self):
    """The end of engineio's _websocket_handler once its reading loop stopped: the writer writes what is queued
    and ends, then the socket closes."""
    try:
        self.queue.put(None)  # unlock the writer task so that it can exit
        wake_writer(self)
        if self.writer_task is not None:
            self.writer_task.join()
    finally:
        self.writer_ws, self.writer_done = None, True
    self.close(wait=False, abort=True, reason=self.server.reason.TRANSPORT_CLOSE)


def wake_writer(sock, until_none=False):
    """On demand: start the socket's writer for what its queue holds, unless one runs or an earlier one ended the
    connection (engineio's writer also ends for good on None or a failed send). until_none: a writer that waits
    for the queue's None, as engineio's does (Socket.close() waits for the queue to be written)."""
    ws = sock.writer_ws
    if ws is None or sock.writer_done or sock.writer_task is not None:
        return
    if not until_none and not sock.queue.qsize():
        return
    sock.writer_task = sock.server.start_background_task(on_demand_writer, sock, ws, not until_none)


def on_demand_writer(sock, ws, until_empty):
    """engineio's writer (the closure in Socket._websocket_handler); until_empty: it also ends, until woken
    again, once the queue is empty instead of waiting on it."""
    try:
        while not until_empty or sock.queue.qsize():
            packets = None
            try:
                packets = sock.poll()
            except exceptions.QueueEmpty:
                break
            if not packets:
                # empty packet list returned -> connection closed
                break
            try:
                for pkt in packets:
                    ws.send(pkt.encode())
            except:  # noqa: E722  (engineio's own)
                break
        else:
            return  # idle again: nothing queued
        sock.writer_done = True
        ws.close()
    finally:
        sock.writer_task = None


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
                wake_writer(sock)

    def move_to_queue(self, sock):
        """A socket's packets still here go to its writer's queue, in order (before close() queues None)."""
        mine = [item for item in self.items if item[0] is sock]
        if mine:
            self.items = [item for item in self.items if item[0] is not sock]
            for _, _, pkt in mine:
                sock.queue.put(pkt)
            wake_writer(sock)


OUTBOX = Outbox()


def in_loop_thread(sock, function, *args, **kwargs):
    """function(*args, **kwargs) for a caller in another thread than the one whose event loop serves `sock` (its
    queue's hub): run by a greenlet of that loop while the caller waits, and its result or exception is the
    caller's. If the loop does not get to it within PING_INTERVAL + PING_TIMEOUT (engineio's writer waits no longer
    for its queue), the caller goes on with one warning; the call still runs when the loop does."""
    hub = sock.queue.hub
    done = ALLOCATE_LOCK()
    done.acquire()
    outcome = []

    def run():
        try:
            outcome.append((True, function(*args, **kwargs)))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            outcome.append((False, exc))
        finally:
            done.release()

    hub.loop.run_callback_threadsafe(gevent.spawn_raw, run)
    waited = sock.server.ping_interval + sock.server.ping_timeout
    if not done.acquire(True, waited):
        log.warning(
            "%s: a %s() from another thread waited %g s for the event loop; it runs when the loop does",
            sock.sid,
            function.__name__,
            waited,
        )
        return None
    ok, value = outcome[0]
    if ok:
        return value
    raise value


def send(sock, pkt):
    """engineio's Socket.send; a packet for an idle WebSocket goes to the outbox instead of its writer."""
    if THREAD_IDENT() != sock.queue.hub.thread_ident:
        return in_loop_thread(sock, send, sock, pkt)
    direct = sock.direct
    if direct is None or not sock.upgraded or sock.queue.qsize():
        ENGINEIO_SEND(sock, pkt)
        return wake_writer(sock)
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
    if THREAD_IDENT() != sock.queue.hub.thread_ident:
        return in_loop_thread(sock, close, sock, *args, **kwargs)
    if sock.direct is not None:
        OUTBOX.move_to_queue(sock)
        sock.direct = None
    if not sock.closed and not sock.closing:  # engineio's close() queues None only then
        wake_writer(sock, until_none=True)  # on demand: a writer that waits for that None, as engineio's
    return ENGINEIO_CLOSE(sock, *args, **kwargs)


def poll(sock):
    """engineio's Socket.poll: the WebSocket writer (once upgraded, under gevent) waits as long as engineio's, and
    then takes what else is queued without raising Empty at the end."""
    if not sock.upgraded or sock.server.async_mode != "gevent":
        return ENGINEIO_POLL(sock)
    queue = sock.queue
    try:  # a timer only if it has to wait: a queued packet is taken at once
        first = queue.get(timeout=sock.server.ping_interval + sock.server.ping_timeout)
    except Empty:
        raise exceptions.QueueEmpty() from None
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
    "geventwebsocket.websocket.Stream.__init__",
]
ASYNC_MODES = ("gevent",)
# the benchmark rows it serves (deployment/patches/README.md)
ROWS = [("broadcast", "app_cpu_ms_per_1000"), ("echo_ws", "app_cpu_ms_per_1000")]
PROVEN_BY = "tests/deployment/test_websocket_writes.py"  # same answers as the library's own code


def install(socketio, app, settings):
    """Patch engineio's Socket (process-wide) per WEBSOCKET_DIRECT_SEND: True; false restores engineio's own path
    (one line, False)."""
    enabled = settings.websocket_direct_send and WebSocket is not None
    engineio_socket.Socket.direct = None
    engineio_socket.Socket.writer_ws = None  # set while on_demand_handler runs: the writer starts on demand
    engineio_socket.Socket.writer_task = None
    engineio_socket.Socket.writer_done = False
    WRITER_ON_DEMAND[0] = settings.websocket_writer_on_demand
    PARK_WHEN_IDLE[0] = None  # deployment/patches/idle_websockets.py, installed after this module, sets it
    engineio_socket.Socket.send = send if enabled else ENGINEIO_SEND
    engineio_socket.Socket.poll = poll if enabled else ENGINEIO_POLL
    engineio_socket.Socket.close = close if enabled else ENGINEIO_CLOSE
    engineio_socket.Socket._websocket_handler = websocket_handler if enabled else ENGINEIO_WEBSOCKET_HANDLER
    if WebSocket is not None:
        Stream.__init__ = stream_init if enabled else STREAM_INIT
    if WebSocket is None:
        return pins.stays_off("websocket_writes", "gevent-websocket is not installed")
    if not settings.websocket_direct_send:
        return pins.stays_off("websocket_writes", "WEBSOCKET_DIRECT_SEND=false: python-engineio's own writer runs")
    return True
