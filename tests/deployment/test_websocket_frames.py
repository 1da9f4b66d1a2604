"""deployment/patches/websocket_writes.py's FrameWriter, which writes every WebSocket frame: one send() per frame,
sendall() only for what a full buffer leaves; and, under it, connection_memory.py's reads: one recv() per
message."""

import os

import gevent
import gevent.socket
import pytest
from geventwebsocket import websocket as gws

from deployment.patches import connection_memory, websocket_writes


class FakeSocket:
    def __init__(self, accepts):
        self.accepts, self.sent, self.sendall_calls = accepts, [], []

    def send(self, data, flags=0, timeout=None):
        self.sent.append(bytes(data[: self.accepts]))
        return min(self.accepts, len(data))

    def sendall(self, data):
        self.sendall_calls.append(bytes(data))


def test_one_send_per_frame_and_sendall_only_for_the_rest():
    whole = FakeSocket(accepts=1 << 20)
    websocket_writes.FrameWriter(whole).write(b"frame")
    assert whole.sent == [b"frame"] and whole.sendall_calls == []

    full_buffer = FakeSocket(accepts=3)
    websocket_writes.FrameWriter(full_buffer).write(b"0123456789")
    assert full_buffer.sent == [b"012"] and full_buffer.sendall_calls == [b"3456789"]


def test_the_app_installs_the_frame_writer(app):
    assert gws.Stream.__init__ is websocket_writes.stream_init


@pytest.mark.parametrize("frame_writer", [True, False], ids=["FrameWriter", "control: gevent-websocket's Stream"])
def test_the_peer_gets_the_same_bytes_as_from_gevent_websockets_stream(frame_writer):
    server_end, peer = gevent.socket.socketpair()
    handler = type("Handler", (), {"socket": server_end, "rfile": server_end.makefile("rb"), "logger": None})()
    stream = object.__new__(gws.Stream)
    (websocket_writes.stream_init if frame_writer else ORIGINAL_STREAM_INIT)(stream, handler)
    ws = gws.WebSocket({}, stream, handler)
    messages = ["text", "é" * 300, b"\x00\x01" * 40000, ""]
    for message in messages:
        ws.send(message, binary=isinstance(message, bytes))
    expected = b"".join(websocket_writes.frame(m) for m in messages)
    received = b""
    while len(received) < len(expected):
        received += peer.recv(1 << 16)
    assert received == expected


class CountingSocket:
    """Stands in for a gevent socket's own OS socket: counts the recv_into() calls, and those that found nothing."""

    def __init__(self, sock):
        self.sock = sock
        self.calls = self.empty = 0

    def __getattr__(self, name):
        return getattr(self.sock, name)

    def recv_into(self, *args):
        self.calls += 1
        try:
            return self.sock.recv_into(*args)
        except BlockingIOError:
            self.empty += 1
            raise


def client_frame(text):
    payload, mask = text.encode(), os.urandom(4)
    return bytes([0x81, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def websocket_over_socketpair(speedup, sent_before):
    """A gevent-websocket WebSocket whose HTTP reader had already buffered `sent_before` (sent with the upgrade)."""
    server_end, peer = gevent.socket.socketpair()
    counter = CountingSocket(server_end._sock)
    server_end._sock = counter
    handler = type("Handler", (), {"socket": server_end, "rfile": server_end.makefile("rb", 4096), "logger": None})()
    if speedup:  # as deployment/patches/connection_memory.py does when pywsgi's handler starts
        connection_memory.read_after_wait(handler.rfile, server_end)
    peer.sendall(sent_before)
    assert handler.rfile.peek(1)  # in the reader's buffer now, as pywsgi may leave it after the request
    stream = object.__new__(gws.Stream)
    (websocket_writes.stream_init if speedup else ORIGINAL_STREAM_INIT)(stream, handler)
    return gws.WebSocket({}, stream, handler), peer, counter


ORIGINAL_STREAM_INIT = websocket_writes.STREAM_INIT  # gevent-websocket's own, kept when the module loaded


@pytest.mark.parametrize("speedup", [True, False], ids=["ReadAfterWait", "control: gevent's reads"])
def test_each_message_takes_one_recv_after_a_wait(speedup):
    ws, peer, counter = websocket_over_socketpair(speedup, client_frame("already there") + client_frame("and this"))
    assert [ws.receive(), ws.receive()] == ["already there", "and this"]
    counter.calls = counter.empty = 0
    for i in range(20):  # the client's next message comes only after a while, as an echo client's does
        gevent.spawn_later(0.002, peer.sendall, client_frame(f"message {i}"))
        assert ws.receive() == f"message {i}"
    if speedup:  # the reads since the handler started (here the buffered frames) tell it when to wait
        assert (counter.calls, counter.empty) == (20, 0)
    else:
        assert (counter.calls, counter.empty) == (40, 20)  # a recv() that finds nothing before each wait
