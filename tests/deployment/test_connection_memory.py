"""deployment/patches/connection_memory.py: what an open connection keeps. Each cut is checked on what it removes (a
greenlet, buffer bytes, an object), with its control; end-to-end, pings still flow through a real stack."""

import gc
import io
import json
import socket
import sys
import time

import engineio
import gevent
import gevent.socket
import pytest
import websocket
from engineio import socket as engineio_socket
from geventwebsocket.handler import WebSocketHandler
from greenlet import greenlet

from deployment.patches import connection_memory, idle_websockets
from deployment.settings import Settings

HANDSHAKE = "/socket.io/?EIO=4&transport=polling"


class RequestStream(io.BytesIO):
    """The handshake request's own body stream (pywsgi's: an Input over the connection's rfile)."""


def handshake(app):
    response = app.test_client().get(HANDSHAKE, input_stream=RequestStream())
    assert response.status_code == 200, response.data
    return json.loads(response.data[1:])["sid"]  # "0{...}": an Engine.IO OPEN packet


def kept_environ(app):
    server = app.extensions["socketio"].server
    return server.environ[handshake(app)]


def test_the_kept_environ_has_an_empty_body_stream(app):
    environ = kept_environ(app)
    assert type(environ["wsgi.input"]) is io.BytesIO and environ["wsgi.input"].read() == b""
    assert environ["PATH_INFO"] == "/socket.io/" and environ["REQUEST_METHOD"] == "GET"  # the rest is kept


def test_control_without_it_the_kept_environ_holds_the_request_stream(app):
    eio = app.extensions["socketio"].server.eio
    wrapped = eio.handlers["connect"]
    eio.on("connect", app.extensions["socketio"].server._handle_eio_connect)  # socketio's own handler
    try:
        assert isinstance(kept_environ(app)["wsgi.input"], RequestStream)
    finally:
        eio.on("connect", wrapped)


def test_events_still_run_on_the_kept_environ(app):
    """Through Engine.IO's own polling path (Flask-SocketIO's test client would skip the connect handler)."""
    http, sid = app.test_client(), handshake(app)
    url = f"{HANDSHAKE}&sid={sid}"
    assert http.post(url, data="40").status_code == 200  # Socket.IO CONNECT, on the environ kept at handshake
    assert http.get(url).data.startswith(b"40{")
    assert http.post(url, data='421["echo","still works"]').status_code == 200
    assert http.get(url).data == b'431["still works"]'


def test_the_app_installs_it(app):
    assert app.extensions["socketio"].server.eio.handlers["connect"].__qualname__.startswith("install.")
    assert engineio_socket.Socket.schedule_ping is connection_memory.schedule_ping
    # idle_websockets (installed after it) replaces it again with a run_websocket that drops the headers too
    assert WebSocketHandler.run_websocket in (connection_memory.run_websocket, idle_websockets.run_websocket)
    assert WebSocketHandler.__init__.read_buffer_size == Settings.read_buffer_size


# --- the ping: a timer of gevent's loop, not a greenlet sleeping through PING_INTERVAL ------------------------
def engineio_socket_with(schedule_ping, interval=0.05):
    server = engineio.Server(async_mode="gevent", ping_interval=interval)
    sock = engineio_socket.Socket(server, "sid")
    sock.last_ping = time.time()  # as after the handshake
    schedule_ping(sock)
    return sock


def greenlets():
    return sum(isinstance(obj, greenlet) and not obj.dead for obj in gc.get_objects())


def sent(sock):
    packets = []
    while not sock.queue.empty():
        packets.append(sock.queue.get_nowait().packet_type)
    return packets


@pytest.mark.parametrize("use_timer", [True, False])
def test_a_ping_waits_in_a_timer_not_a_greenlet(use_timer):
    schedule_ping = connection_memory.schedule_ping if use_timer else connection_memory.ENGINEIO_SCHEDULE_PING
    before = greenlets()
    sock = engineio_socket_with(schedule_ping)
    waiting = greenlets() - before
    assert waiting == (0 if use_timer else 1)  # control: engineio's own keeps a greenlet per connection
    assert sent(sock) == []
    gevent.sleep(0.2)
    assert sent(sock) == [engineio.packet.PING] and sock.last_ping  # then the same PING, once per answered one
    gevent.sleep(0.1)
    assert sent(sock) == [] and greenlets() - before == 0


def test_no_ping_for_a_closed_socket():
    sock = engineio_socket_with(connection_memory.schedule_ping)
    sock.closed = True
    gevent.sleep(0.2)
    assert sent(sock) == [] and sock.last_ping is None


def test_other_async_modes_keep_engineio_s_own(monkeypatch):
    calls = []
    monkeypatch.setattr(connection_memory, "ENGINEIO_SCHEDULE_PING", calls.append)
    sock = engineio_socket.Socket(engineio.Server(async_mode="threading"), "sid")
    connection_memory.schedule_ping(sock)
    assert calls == [sock]


# --- the read buffer and the parsed headers of gevent-websocket's handler ----------------------------------
def handler_rfile_size(read_buffer_size):
    connection_memory.install_handler(read_buffer_size)
    left, right = socket.socketpair()
    try:
        handler = WebSocketHandler(left, ("127.0.0.1", 1), server=None)
        return sys.getsizeof(handler.rfile)  # a BufferedReader counts its buffer
    finally:
        left.close(), right.close()


def test_every_connection_reads_after_a_wait():
    """One recv() per read (connection_memory.ReadAfterWait) on every connection, HTTP and WebSocket alike."""
    connection_memory.install_handler(Settings.read_buffer_size)
    left, right = gevent.socket.socketpair()
    try:
        handler = WebSocketHandler(left, ("127.0.0.1", 1), server=None)
        assert isinstance(handler.rfile.raw.readinto.__self__, connection_memory.ReadAfterWait)
    finally:
        left.close(), right.close()


def test_the_read_buffer_has_read_buffer_size_bytes():
    try:
        assert handler_rfile_size(4096) - handler_rfile_size(1024) == 3072
        assert handler_rfile_size(8192) - handler_rfile_size(2048) == 6144  # 8192: pywsgi's own size
    finally:
        connection_memory.install_handler(Settings.read_buffer_size)


def test_read_buffer_size_setting():
    assert Settings.from_env({"APP_ENV": "development", "READ_BUFFER_SIZE": "4096"}).read_buffer_size == 4096
    with pytest.raises(Exception, match="READ_BUFFER_SIZE"):
        Settings.from_env({"APP_ENV": "development", "READ_BUFFER_SIZE": "12"})


def test_an_open_websocket_lets_go_of_its_parsed_request_headers(monkeypatch):
    seen = []
    monkeypatch.setattr(connection_memory, "GEVENT_WEBSOCKET_RUN", lambda handler: seen.append(handler.headers))
    handler = WebSocketHandler.__new__(WebSocketHandler)
    handler.headers = parsed = WebSocketHandler.MessageClass(handler, io.BytesIO(b"Cookie: io=x\r\n\r\n"), 0)
    assert parsed.get("Cookie") == "io=x"
    connection_memory.run_websocket(handler)
    assert seen == [WebSocketHandler.headers] and seen[0] is not parsed  # pywsgi's empty class default
    assert seen[0].get("Cookie") is None


# --- end to end: pings through HAProxy to a real instance -------------------------------------------------
def count_pings(url, seconds, answer):
    """A raw Engine.IO WebSocket client: how many PINGs it gets in `seconds`, answering each with a PONG or not."""
    ws = websocket.create_connection(url.replace("http", "ws", 1) + "/socket.io/?EIO=4&transport=websocket", timeout=5)
    try:
        assert ws.recv().startswith("0{")  # OPEN
        pings, deadline = 0, time.monotonic() + seconds
        while time.monotonic() < deadline:
            ws.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                message = ws.recv()
            except websocket.WebSocketTimeoutException:
                break
            except websocket.WebSocketConnectionClosedException:
                return pings, "closed"
            if message == "2":
                pings += 1
                if answer:
                    ws.send("3")
            elif message == "1":
                return pings, "closed"
        return pings, "open"
    finally:
        ws.close()


def test_pings_keep_coming_while_answered_and_stop_when_not(own_stack):
    stack = own_stack(replicas=1, PING_INTERVAL=1, PING_TIMEOUT=1)
    url = stack.status()["url"]
    pings, state = count_pings(url, 4.5, answer=True)
    assert pings >= 3 and state == "open"
    # control: the next ping waits for the PONG, and without one the instance closes the connection
    pings, state = count_pings(url, 4.5, answer=False)
    assert pings == 1 and state == "closed"
