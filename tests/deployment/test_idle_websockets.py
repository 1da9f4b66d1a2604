"""deployment/patches/idle_websockets.py: an idle WebSocket holds no greenlet, and a parked WebSocket answers as one
whose greenlet waits in recv(). The app as shipped (create_app) behind gevent's pywsgi server with gevent-websocket's
handler, as gunicorn's worker runs it, in this process (so its greenlets can be counted); the clients speak
WebSocket over real TCP sockets, frame by frame, so that a test controls when each byte arrives. Every test
runs with the module on and, as the control, off (SPEEDUPS_SKIP=idle_websockets: the library's own reading)."""

import gc
import json
import os
import socket
import struct

import gevent
import gevent.socket
import greenlet
import pytest
from gevent import pywsgi
from geventwebsocket.handler import WebSocketHandler

from deployment.patches import idle_websockets, websocket_writes
from deployment.patches.event_greenlets import EventRunner
from deployment.settings import Settings

OPCODE_TEXT, OPCODE_CLOSE = 0x1, 0x8


def build_app(parking):
    from stack_app import create_app

    env = {"APP_ENV": "development", "INSTANCE_NAME": "unit", "EVENT_RATE": "100000", "EVENT_BURST": "100000"}
    if not parking:
        env["SPEEDUPS_SKIP"] = "idle_websockets"
    app = create_app(Settings.from_env(env))
    assert (websocket_writes.PARK_WHEN_IDLE[0] is not None) == parking
    return app


@pytest.fixture(params=[True, False], ids=["parked", "control-greenlet-per-websocket"])
def server(request):
    app = build_app(request.param)
    wsgi = pywsgi.WSGIServer(("127.0.0.1", 0), app, handler_class=WebSocketHandler, log=None)
    wsgi.start()
    wsgi.parking = request.param
    wsgi.eio = app.extensions["socketio"].server.eio
    yield wsgi
    wsgi.stop(timeout=1)
    websocket_writes.PARK_WHEN_IDLE[0] = None


class Client:
    """A WebSocket client over a gevent socket: Engine.IO straight over WebSocket (no polling first)."""

    def __init__(self, server, sid=None):
        path = "/socket.io/?EIO=4&transport=websocket" + (f"&sid={sid}" if sid else "")
        self.sock = gevent.socket.create_connection(("127.0.0.1", server.server_port))
        self.sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        self.reader = self.sock.makefile("rb")
        status = self.reader.readline()
        assert b" 101 " in status, status
        while self.reader.readline() not in (b"\r\n", b""):
            pass
        if sid:  # the upgrade of a long-polling session, as the JS client makes it
            self.send("2probe")
            assert self.text() == "3probe"
            self.send("5")
            self.open = {"sid": sid}
        else:
            self.open = json.loads(self.text()[1:])  # Engine.IO OPEN
        self.send("40")
        assert self.text().startswith("40{")  # Socket.IO CONNECT answered

    def frame(self, text, opcode=OPCODE_TEXT):
        payload, mask = text.encode(), os.urandom(4)
        length = len(payload)
        if length < 126:
            header = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
        elif length < 65536:
            header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
        else:
            header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
        return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))

    def send(self, text):
        self.sock.sendall(self.frame(text))

    def read_frame(self, timeout=10):
        with gevent.Timeout(timeout):
            head = self.reader.read(2)
            if len(head) < 2:
                return None, None  # the server closed the TCP connection
            opcode, length = head[0] & 0x0F, head[1] & 0x7F
            if length == 126:
                (length,) = struct.unpack("!H", self.reader.read(2))
            elif length == 127:
                (length,) = struct.unpack("!Q", self.reader.read(8))
            return opcode, self.reader.read(length)

    def text(self):
        while True:
            opcode, data = self.read_frame()
            assert opcode == OPCODE_TEXT, (opcode, data)
            if data == b"2":  # answer the server's pings as a client does
                self.send("3")
            elif data != b"6":  # NOOP: what ended the long-polling GET
                return data.decode()

    def close(self):
        self.sock.close()


def settle(seconds=0.2):
    gevent.sleep(seconds)  # let the server read what arrived and park (or wait in recv)


def reading_greenlets():
    """Greenlets alive in this process that are neither the hub nor this test's own, nor event_greenlets' runners
    waiting for the next event (they run events, not reads)."""
    current, hub = greenlet.getcurrent(), gevent.get_hub()
    alive = [
        g
        for g in gc.get_objects()
        if isinstance(g, greenlet.greenlet) and g and g not in (current, hub) and not isinstance(g, EventRunner)
    ]
    return len(alive)


def test_an_idle_websocket_holds_no_greenlet(server):
    """20 idle clients: parked, no greenlet each; the control holds one each (its reader waiting in recv)."""
    clients = [Client(server)]  # the first one also starts engineio's service task
    settle()
    before, kept_before = reading_greenlets(), len(idle_websockets.READERS.waiting)
    clients += [Client(server) for _ in range(20)]
    settle()
    held = reading_greenlets() - before
    if server.parking:
        assert held == 0
        readers = [o for o in gc.get_objects() if isinstance(o, idle_websockets.IdleReader)]
        assert len(readers) == 21
        for reader in readers:  # parked without its read buffer, nor the upgrade request's environ
            assert reader.rfile is None and reader.watcher.active
            assert reader.handler.environ is None and reader.ws.environ is None
    else:
        assert held == 20
    for client in clients:  # they still answer after the wait
        client.send('421["echo","after idling"]')
        assert client.text() == '431["after idling"]'
    if server.parking:  # read by kept greenlets, one after the other: not a greenlet made per message
        kept = len(idle_websockets.READERS.waiting)
        assert 1 <= kept <= 3
        assert reading_greenlets() - before == kept - kept_before
    for client in clients:
        client.close()


def session(server):
    """One scripted session, frame by frame with pauses between (so a parked reader parks and wakes between
    them): its frames, as the client received them, but pings."""
    client = Client(server)
    got = []
    for burst in range(5):
        for i in range(20):  # pipelined: several frames arrive together, read in one recv()
            client.send(f'42{burst * 100 + i}["echo","{burst}-{i}"]')
        for _ in range(20):
            got.append(client.text())
        settle(0.05)
    big = "x" * 200_000  # far beyond the 4 KB read buffer, arriving over many recv()s
    client.send(f'4299["echo","{big}"]')
    got.append(client.text())
    # a frame that arrives in two parts with a pause: the reader waits for the rest inside the frame
    half = client.frame('4298["echo","split"]')
    client.sock.sendall(half[:5])
    settle(0.1)
    client.sock.sendall(half[5:])
    got.append(client.text())
    client.sock.sendall(client.frame("", OPCODE_CLOSE))  # the client closes: the server answers and ends
    ends = [client.read_frame() for _ in range(2)]
    client.close()
    return got, ends


def test_a_parked_websocket_answers_as_one_waiting_in_recv(server):
    got, ends = session(server)
    expected = [f'43{burst * 100 + i}["{burst}-{i}"]' for burst in range(5) for i in range(20)]
    assert got[:100] == expected  # every answer, in order
    assert got[100] == f'4399["{"x" * 200_000}"]' and got[101] == '4398["split"]'
    assert ends[0][0] == OPCODE_CLOSE  # gevent-websocket's close frame
    assert ends[1] == (None, None)  # then the TCP connection closes
    settle()
    assert not server.eio.sockets  # the Engine.IO session is gone


def sessions_of(server):
    return {sid: sock for sid, sock in server.eio.sockets.items() if not sock.closed}


def test_a_client_that_vanishes_while_parked_ends_its_session(server):
    client = Client(server)
    settle()
    assert len(sessions_of(server)) == 1
    client.sock.shutdown(socket.SHUT_RDWR)  # no close frame: the TCP connection just ends
    client.close()
    settle()
    assert not sessions_of(server)
    assert not getattr(server, "clients", {})  # gevent-websocket's registry of open WebSockets


def test_the_server_closing_a_parked_websocket_closes_it(server):
    closing, staying = Client(server), Client(server)
    settle()
    server.eio.disconnect(closing.open["sid"])  # as a handler's disconnect() does
    assert closing.read_frame() == (OPCODE_TEXT, b"1")  # Engine.IO CLOSE
    assert closing.read_frame()[0] == OPCODE_CLOSE  # then the WebSocket's close frame
    closing.sock.sendall(closing.frame("", OPCODE_CLOSE))  # the client answers it
    assert closing.read_frame() == (None, None)  # and the server closes the TCP connection
    settle()
    assert list(sessions_of(server)) == [staying.open["sid"]]
    staying.send('421["echo","still here"]')  # the other client was not touched
    assert staying.text() == '431["still here"]'
    staying.close()


def test_a_client_that_started_on_long_polling_parks_after_the_upgrade(server):
    import requests

    base = f"http://127.0.0.1:{server.server_port}/socket.io/?EIO=4&transport=polling"
    http = requests.Session()
    Client(server).close()  # engineio's service task runs from the first connection on
    settle()
    before = reading_greenlets()

    def handshake():
        return json.loads(http.get(base, timeout=5).text[1:])

    opened = gevent.get_hub().threadpool.spawn(handshake).get(timeout=10)  # requests blocks: off the loop
    http.close()  # its keep-alive connection would hold a handler greenlet of its own
    client = Client(server, sid=opened["sid"])
    settle()
    assert reading_greenlets() - before == (0 if server.parking else 1)
    client.send('421["echo","upgraded"]')
    assert client.text() == '431["upgraded"]'
    client.close()


def test_the_app_installs_it(server):
    expected = idle_websockets.run_websocket if server.parking else None
    if expected:
        assert WebSocketHandler.run_websocket is expected
