"""patches/inline_handlers.py: a WebSocket's events run in the greenlet that read them until a handler waits;
then a new greenlet reads the connection, so a waiting handler holds up none of the client's other events.
A real python-socketio Server with python-engineio's own WebSocket handler, the client's side a queue; then
through a real stack, a handler waiting on a stopped Redis, with ASYNC_HANDLERS=false as the control."""

import logging

import gevent
import gevent.event
import gevent.queue
import pytest
import socketio
from engineio import packet as engineio_packet
from engineio import socket as engineio_socket
from gevent import getcurrent
from socketio import packet as socketio_packet

from application.config import Settings
from patches import inline_handlers, websocket_writes

DEV = {"APP_ENV": "development"}


@pytest.fixture(autouse=True)
def writes_installed():
    websocket_writes.install(
        None, None, Settings.from_env(DEV)
    )  # the WebSocket handler that sets up a connection's Reader
    yield


class ClientWebSocket:
    """engineio's `ws` of a connected client: what it sends is put in `incoming`, what it gets lands in `got`."""

    def __init__(self):
        self.incoming = gevent.queue.Queue()
        self.got = gevent.queue.Queue()

    def wait(self):
        return self.incoming.get()

    def send(self, message):
        self.got.put(message)

    def close(self):
        pass

    def emit(self, event, *args, ack_id=None):
        pkt = socketio_packet.Packet(socketio_packet.EVENT, data=[event, *args], id=ack_id)
        self.incoming.put(engineio_packet.Packet(engineio_packet.MESSAGE, data=pkt.encode()).encode())

    def next_packet(self, timeout=5):
        """The next Socket.IO packet the server sent (Engine.IO pings skipped)."""
        with gevent.Timeout(timeout):
            while True:
                message = engineio_packet.Packet(encoded_packet=self.got.get())
                if message.packet_type == engineio_packet.MESSAGE:
                    return socketio_packet.Packet(encoded_packet=message.data)


class Connection:
    def __init__(self, server):
        self.server = server
        self.ws = ClientWebSocket()
        self.sock = engineio_socket.Socket(server.eio, "eio-1")
        server.eio.sockets["eio-1"] = self.sock
        server._handle_eio_connect("eio-1", {"REQUEST_METHOD": "GET"})
        self.reader = gevent.spawn(self.sock._websocket_handler, self.ws)  # engineio's handler, as engineio runs it
        self.ws.incoming.put(engineio_packet.Packet(engineio_packet.MESSAGE, data="0").encode())  # Socket.IO CONNECT
        connected = self.ws.next_packet()
        assert connected.packet_type == socketio_packet.CONNECT
        self.sid = connected.data["sid"]

    def ack(self, timeout=5):
        pkt = self.ws.next_packet(timeout)
        assert pkt.packet_type == socketio_packet.ACK, pkt.data
        return pkt.id, pkt.data

    def end(self):
        self.ws.incoming.put(None)
        self.reader.join(timeout=5)
        assert self.reader.dead


def make_server(inline=True, **env):
    server = socketio.Server(async_mode="gevent")
    inline_handlers.install_on(server, Settings.from_env({**DEV, "INLINE_HANDLERS": str(inline).lower(), **env}))
    return server


def test_a_handler_that_does_not_wait_runs_in_the_greenlet_that_read_its_event():
    server = make_server()
    ran_in = []
    server.on("where", lambda sid: ran_in.append(getcurrent()) or "here")
    conn = Connection(server)
    conn.ws.emit("where", ack_id=1)
    assert conn.ack() == (1, ["here"])
    assert ran_in == [conn.reader]
    assert inline_handlers.READERS[conn.reader].read.__self__ is conn.ws
    conn.end()
    assert conn.reader not in inline_handlers.READERS and "wait" not in vars(conn.ws)  # nothing kept


def test_control_with_the_setting_off_every_event_gets_a_greenlet():
    server = make_server(inline=False, IDLE_EVENT_GREENLETS="0")
    assert not server.eio.inline_handlers and "_handle_event" not in vars(server)  # python-socketio's own
    ran_in = []
    server.on("where", lambda sid: ran_in.append(getcurrent()) or "here")
    conn = Connection(server)
    conn.ws.emit("where", ack_id=1)
    assert conn.ack() == (1, ["here"])
    assert ran_in[0] is not conn.reader
    conn.end()


def hold_and_release(server):
    released = gevent.event.Event()

    def hold(sid):
        released.wait()
        released.clear()  # the next `hold` waits for the next `release`
        return "held"

    def release(sid):
        released.set()
        return "released"

    server.on("hold", hold)
    server.on("release", release)
    return released


def test_a_handler_that_waits_holds_up_none_of_the_clients_other_events():
    server = make_server()
    hold_and_release(server)
    conn = Connection(server)
    conn.ws.emit("hold", ack_id=1)
    conn.ws.emit("release", ack_id=2)  # read and run while `hold` still waits for it
    assert conn.ack() == (2, ["released"])
    assert conn.ack() == (1, ["held"])
    conn.ws.emit("hold", ack_id=3)  # the new reader runs each event in a greenlet of its own, as python-socketio
    conn.ws.emit("release", ack_id=4)
    assert [conn.ack(), conn.ack()] == [(4, ["released"]), (3, ["held"])]
    conn.end()


def test_control_without_the_hand_over_a_waiting_handler_holds_up_the_next_event(monkeypatch):
    monkeypatch.setattr(inline_handlers.Reader, "handler_waits", lambda reader: None)
    server = make_server()
    released = hold_and_release(server)
    conn = Connection(server)
    conn.ws.emit("hold", ack_id=1)
    conn.ws.emit("release", ack_id=2)
    with pytest.raises(gevent.Timeout):
        conn.ack(timeout=1)  # nobody reads `release` while `hold` waits
    released.set()
    assert [conn.ack(), conn.ack()] == [(1, ["held"]), (2, ["released"])]
    conn.end()


def test_call_from_a_handler_gets_the_clients_answer():
    server = make_server()
    server.on("ask", lambda sid, question: server.call("question", question, to=sid, timeout=5))
    conn = Connection(server)
    conn.ws.emit("ask", "6x7?", ack_id=1)
    call = conn.ws.next_packet()
    assert call.packet_type == socketio_packet.EVENT and call.data == ["question", "6x7?"]
    answer = socketio_packet.Packet(socketio_packet.ACK, data=[42], id=call.id)
    conn.ws.incoming.put(engineio_packet.Packet(engineio_packet.MESSAGE, data=answer.encode()).encode())
    assert conn.ack() == (1, [42])
    conn.end()


def test_the_connection_ends_when_the_client_leaves_though_a_handler_still_waits():
    server = make_server()
    released = hold_and_release(server)
    disconnected = gevent.event.Event()
    server.on("disconnect", lambda sid, reason: disconnected.set())
    conn = Connection(server)
    conn.ws.emit("hold", ack_id=1)
    gevent.sleep(0.05)
    conn.ws.incoming.put(None)  # the client leaves
    assert disconnected.wait(timeout=5)
    assert conn.sock.closed
    assert not conn.reader.dead  # engineio's handler returns (and the socket closes) once `hold` returns
    released.set()
    conn.reader.join(timeout=5)
    assert conn.reader.dead


def test_an_error_in_a_handler_ends_neither_the_connection_nor_its_reading(caplog):
    server = make_server()
    server.on("fail", lambda sid: 1 / 0)
    server.on("echo", lambda sid, data: data)
    conn = Connection(server)
    with caplog.at_level(logging.ERROR, logger="patches.inline_handlers"):
        conn.ws.emit("fail", ack_id=1)
        conn.ws.emit("echo", "still here", ack_id=2)
        assert conn.ack() == (2, ["still here"])
    assert "ZeroDivisionError" in caplog.text
    assert not conn.sock.closed
    conn.end()


# --- through a real stack ------------------------------------------------------------------------------


@pytest.mark.parametrize("async_handlers", ["true", "false"], ids=["shipped", "control-ASYNC_HANDLERS=false"])
def test_a_handler_waiting_on_redis_holds_up_none_of_the_clients_events(own_stack, clients, async_handlers):
    """One instance behind HAProxy, a python-socketio client on WebSocket. With Redis stopped (SIGSTOP), the
    `broadcast` handler waits for its PUBLISH reply (up to 2 s); the same client's `echo` is answered
    meanwhile. The control runs a client's events in order, and its echo waits for the broadcast."""
    import os
    import signal
    import time

    stack = own_stack(replicas=1, ASYNC_HANDLERS=async_handlers)
    client = clients(stack.status()["url"], transports=["websocket"])
    assert client.call("echo", "before") == "before"
    redis_pid = stack.status()["redis"]["pid"]
    os.kill(redis_pid, signal.SIGSTOP)
    try:
        client.client.emit("broadcast", {"n": 1})
        time.sleep(0.2)  # the broadcast handler is waiting for Redis now
        started = time.monotonic()
        try:
            answer = client.call("echo", "meanwhile", timeout=1)
        except socketio.exceptions.TimeoutError:
            answer = None
        waited = time.monotonic() - started
    finally:
        os.kill(redis_pid, signal.SIGCONT)
    if async_handlers == "true":
        assert answer == "meanwhile" and waited < 0.5, waited
    else:
        assert answer is None  # held up behind the waiting handler
    assert client.call("echo", "after") == "after"
