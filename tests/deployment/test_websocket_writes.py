"""deployment/patches/websocket_writes.py: packets for an idle WebSocket go out from the event loop's outbox, and a
client that does not read holds up no one. Real engineio Sockets and python-engineio's own WebSocket handler over a
real socket pair, the peer parsing frames the way a client would; then the same through a real stack."""

import fcntl
import io
import json
import logging
import socket
import struct
import termios
import time

import engineio
import gevent
import gevent.monkey
import gevent.queue
import gevent.socket
import pytest
import requests
import websocket
from engineio import packet
from engineio import socket as engineio_socket
from geventwebsocket import websocket as gws
from prometheus_client.parser import text_string_to_metric_families

from deployment.patches import websocket_writes
from deployment.settings import Settings

log = logging.getLogger("test_websocket_writes")


@pytest.fixture(autouse=True)
def installed():
    websocket_writes.install(None, None, Settings.from_env({"APP_ENV": "development"}))
    yield
    websocket_writes.install(None, None, Settings.from_env({"APP_ENV": "development"}))


class Client:
    """engineio's `ws` for a real gevent-websocket WebSocket over one end of a socket pair."""

    def __init__(self, sndbuf=None):
        server_end, self.peer = gevent.socket.socketpair()
        if sndbuf:
            server_end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        handler = type("Handler", (), {"socket": server_end, "rfile": server_end.makefile("rb"), "logger": log})()
        self._sock = gws.WebSocket({}, gws.Stream(handler), handler)
        self.incoming = gevent.queue.Queue()  # what the client "sends"; None ends the connection

    def send(self, message):
        return self._sock.send(message)

    def wait(self):
        return self.incoming.get()

    def close(self):
        return self._sock.close()

    def read_frames(self, count, timeout=10):
        """The payloads of the next `count` frames, parsed as a client parses server (unmasked) frames."""
        reader = self.peer.makefile("rb")
        frames = []
        with gevent.Timeout(timeout):
            for _ in range(count):
                opcode, length = reader.read(2)
                length &= 0x7F
                if length == 126:
                    (length,) = struct.unpack("!H", reader.read(2))
                elif length == 127:
                    (length,) = struct.unpack("!Q", reader.read(8))
                frames.append((opcode & 0x0F, reader.read(length)))
        return frames


def open_socket(client, direct=True):
    """An engineio Socket whose client connected over WebSocket, its handler running as engineio runs it."""
    server = engineio.Server(async_mode="gevent")
    sock = engineio_socket.Socket(server, "sid-1")
    handler = gevent.spawn(sock._websocket_handler, client)
    gevent.sleep(0.01)  # the handler starts its writer and waits for the client
    assert sock.upgraded and (sock.direct is not None) == direct
    return sock, handler


def message(i, size=0):
    return packet.Packet(packet.MESSAGE, data=f'42["n",{i}]{"x" * size}')


def test_frame_is_what_gevent_websocket_writes():
    sent = []
    handler = type("Handler", (), {"socket": None, "rfile": io.BytesIO(), "logger": log})()
    stream = gws.Stream(handler)
    stream.write = sent.append
    ws = gws.WebSocket({}, stream, handler)
    for payload in ["2", '42["echo","héllo"]', "x" * 200, "y" * 70000, b"\x04binary"]:
        ws.send(payload)
        assert websocket_writes.frame(payload) == sent.pop()


def encoded(pkt):
    return pkt.encode().encode()


def test_a_packet_for_an_idle_websocket_is_sent_by_the_loop_not_its_writer():
    client = Client()
    sock, handler = open_socket(client)
    sock.send(message(1))
    assert sock.queue.qsize() == 0 and len(websocket_writes.OUTBOX.items) == 1
    gevent.sleep(0)  # the loop runs the outbox
    assert sock.queue.qsize() == 0 and websocket_writes.OUTBOX.items == []
    assert client.read_frames(1) == [(gws.WebSocket.OPCODE_TEXT, b'442["n",1]')]
    client.incoming.put(None)
    handler.join(timeout=5)


def test_control_with_the_setting_off_packets_go_through_the_writer_queue():
    websocket_writes.install(
        None, None, Settings.from_env({"APP_ENV": "development", "WEBSOCKET_DIRECT_SEND": "false"})
    )
    assert engineio_socket.Socket.send is websocket_writes.ENGINEIO_SEND
    client = Client()
    sock, handler = open_socket(client, direct=False)
    sock.send(message(1))
    assert sock.queue.qsize() == 1 and websocket_writes.OUTBOX.items == []
    assert client.read_frames(1) == [(gws.WebSocket.OPCODE_TEXT, b'442["n",1]')]  # the same bytes
    client.incoming.put(None)
    handler.join(timeout=5)


def test_a_client_that_does_not_read_holds_up_no_one_and_gets_everything_in_order():
    slow, other = Client(sndbuf=4096), Client()
    slow_sock, slow_handler = open_socket(slow)
    other_sock, other_handler = open_socket(other)
    count, size = 400, 1000  # far more than the socket buffers hold while the peer does not read
    for i in range(count):
        slow_sock.send(message(i, size))
    other_sock.send(message(-1))
    gevent.sleep(0)  # the loop runs the outbox once
    assert slow_sock.queue.qsize() > 0  # the buffers filled: the rest waits in the writer's queue
    assert other_sock.queue.qsize() == 0
    assert other.read_frames(1) == [(gws.WebSocket.OPCODE_TEXT, encoded(message(-1)))]
    frames = slow.read_frames(count)  # the slow client reads at last: everything, in order
    assert [data for _, data in frames] == [encoded(message(i, size)) for i in range(count)]
    for client, handler in ((slow, slow_handler), (other, other_handler)):
        client.incoming.put(None)
        handler.join(timeout=5)
        assert handler.dead


def test_a_frame_the_kernel_takes_in_part_is_finished_before_the_next_one():
    client = Client(sndbuf=4096)
    sock, handler = open_socket(client)
    big, small = message(1, 300_000), message(2)
    sock.send(big)
    gevent.sleep(0)  # part goes out from the loop, a greenlet writes the rest
    writer = client._sock.stream.write.__self__
    assert writer.busy.locked() and sock.queue.qsize() == 0
    sock.send(small)
    gevent.sleep(0)
    assert sock.queue.qsize() + writer.busy.locked() >= 1  # small waits (queued) for the rest of big
    frames = client.read_frames(2)
    assert [data for _, data in frames] == [encoded(big), encoded(small)]
    client.incoming.put(None)
    handler.join(timeout=5)


def test_close_sends_what_was_sent_before_it_then_close():
    client = Client()
    sock, handler = open_socket(client)
    sock.send(message(1))  # still in the outbox when the server closes the connection
    sock.close(wait=False)  # engineio: a CLOSE packet, then None for the writer
    frames = client.read_frames(3)
    assert frames[0] == (gws.WebSocket.OPCODE_TEXT, encoded(message(1)))
    assert frames[1] == (gws.WebSocket.OPCODE_TEXT, b"1")  # Engine.IO CLOSE
    assert frames[2][0] == gws.WebSocket.OPCODE_CLOSE  # the writer ended and closed the WebSocket
    client.incoming.put(None)
    handler.join(timeout=5)
    assert handler.dead


def test_control_without_moving_the_outbox_first_close_would_overtake_it(monkeypatch):
    monkeypatch.setattr(websocket_writes.Outbox, "move_to_queue", lambda self, sock: None)
    client = Client()
    sock, handler = open_socket(client)
    sock.send(message(1))
    sock.close(wait=False)
    frames = client.read_frames(2)
    assert frames == [(gws.WebSocket.OPCODE_TEXT, b"1"), (gws.WebSocket.OPCODE_TEXT, encoded(message(1)))]
    client.incoming.put(None)
    handler.join(timeout=5)


def test_packets_for_a_closed_websocket_go_to_the_queue_as_engineio_does():
    client = Client()
    sock, handler = open_socket(client)
    client._sock.close()
    sock.send(message(1))
    gevent.sleep(0)
    assert sock.queue.qsize() == 1
    client.incoming.put(None)
    handler.join(timeout=5)


def on_demand(enabled):
    websocket_writes.install(
        None, None, Settings.from_env({"APP_ENV": "development", "WEBSOCKET_WRITER_ON_DEMAND": str(enabled).lower()})
    )


def test_an_idle_websocket_holds_no_writer_greenlet():
    client = Client()
    sock, handler = open_socket(client)
    assert sock.writer_task is None  # engineio's writer would be waiting on the queue for the connection's life
    for i in range(3):
        sock.send(message(i))
    gevent.sleep(0)
    assert [data for _, data in client.read_frames(3)] == [encoded(message(i)) for i in range(3)]
    assert sock.writer_task is None
    client.incoming.put(None)
    handler.join(timeout=5)
    assert handler.dead


def test_control_with_the_setting_off_engineio_writer_waits_for_the_whole_connection():
    on_demand(False)
    client = Client()
    sock, handler = open_socket(client)
    assert sock.writer_task is None and sock.writer_ws is None  # engineio's handler, its own writer
    sock.send(message(1))
    assert client.read_frames(1) == [(gws.WebSocket.OPCODE_TEXT, encoded(message(1)))]
    client.incoming.put(None)
    handler.join(timeout=5)
    assert handler.dead


def whole_session(enabled, upgrade):
    """Everything a client reads in one session, with the writer on demand or engineio's: an upgrade (or a
    connection that starts on WebSocket), packets the kernel cannot all take (the queue and the writer), a
    pause, more packets, a client message, then the server closes and waits (close(wait=True))."""
    on_demand(enabled)
    client = Client(sndbuf=4096)
    server = engineio.Server(async_mode="gevent")
    sock = engineio_socket.Socket(server, "sid-1")
    received = []
    sock.receive = received.append
    if upgrade:
        sock.connected = True
        client.incoming.put("2probe")
        client.incoming.put("5")
    handler = gevent.spawn(sock._websocket_handler, client)
    gevent.sleep(0.01)
    assert sock.upgraded
    count, size = 120, 1000
    for i in range(count):
        sock.send(message(i, size))
    gevent.sleep(0)
    if enabled:
        assert sock.writer_task is not None  # started for what the kernel did not take
    frames = client.read_frames(count + (2 if upgrade else 0))
    gevent.sleep(0.05)
    if enabled:
        assert sock.writer_task is None  # the queue is empty: it ended
    sock.send(message(-1))
    client.incoming.put('42["hi"]')
    gevent.sleep(0.01)
    closer = gevent.spawn(sock.close)  # wait=True: returns once the writer took the queue's None
    frames += client.read_frames(3)
    closer.join(timeout=5)
    assert closer.dead and closer.successful()
    client.incoming.put(None)
    handler.join(timeout=5)
    assert handler.dead
    return frames, [(p.packet_type, p.data) for p in received], sock.queue.unfinished_tasks


@pytest.mark.parametrize("upgrade", [False, True])
def test_on_demand_writer_writes_what_engineio_writer_writes(upgrade):
    ours, engineios = whole_session(True, upgrade), whole_session(False, upgrade)
    assert ours == engineios
    frames, received, _unfinished = ours
    if upgrade:
        assert frames[:2] == [(gws.WebSocket.OPCODE_TEXT, b"3probe"), (gws.WebSocket.OPCODE_TEXT, b"6")]
    assert frames[-3:-1] == [(gws.WebSocket.OPCODE_TEXT, encoded(message(-1))), (gws.WebSocket.OPCODE_TEXT, b"1")]
    assert frames[-1][0] == gws.WebSocket.OPCODE_CLOSE
    assert received == [(packet.MESSAGE, '2["hi"]')]  # unfinished: as engineio's (the None it puts back)


# --- the writer's wait: as long as engineio's ----------------------------------------------------------------


@pytest.mark.parametrize("ours", [True, False], ids=["websocket_writes' poll", "control: engineio's poll"])
def test_the_writer_waits_for_its_queue_as_long_as_engineio_s_writer(ours, monkeypatch):
    """An upgraded socket's poll(): a queued packet at once; an empty queue, QueueEmpty after PING_INTERVAL +
    PING_TIMEOUT, as engineio's (its writer then closes the WebSocket)."""
    if not ours:
        monkeypatch.setattr(engineio_socket.Socket, "poll", websocket_writes.ENGINEIO_POLL)
    assert (engineio_socket.Socket.poll is websocket_writes.poll) == ours
    server = engineio.Server(async_mode="gevent", ping_interval=0.2, ping_timeout=0.1)
    sock = engineio_socket.Socket(server, "sid-1")
    sock.upgraded = True
    sock.queue.put(message(1))
    sock.queue.put(message(2))
    assert [p.data for p in sock.poll()] == [message(1).data, message(2).data]
    start = time.monotonic()
    with pytest.raises(engineio.exceptions.QueueEmpty):
        sock.poll()
    assert 0.25 <= time.monotonic() - start < 2
    assert sock.queue.unfinished_tasks == 0


@pytest.mark.parametrize("ours", [True, False], ids=["websocket_writes' poll", "control: engineio's poll"])
def test_engineio_s_writer_with_nothing_to_write_ends_as_engineio_s_does(ours, monkeypatch):
    """WEBSOCKET_WRITER_ON_DEMAND=false: engineio's handler and writer run with this module's poll(). A writer
    that got nothing for PING_INTERVAL + PING_TIMEOUT closes the WebSocket, with engineio's poll as with ours."""
    on_demand(False)
    if not ours:
        monkeypatch.setattr(engineio_socket.Socket, "poll", websocket_writes.ENGINEIO_POLL)
    client = Client()
    server = engineio.Server(async_mode="gevent", ping_interval=0.2, ping_timeout=0.1)
    sock = engineio_socket.Socket(server, "sid-1")
    handler = gevent.spawn(sock._websocket_handler, client)
    gevent.sleep(0.01)
    sock.send(message(1))
    assert client.read_frames(1) == [(gws.WebSocket.OPCODE_TEXT, encoded(message(1)))]
    assert client.read_frames(1, timeout=2)[0][0] == gws.WebSocket.OPCODE_CLOSE  # after ~0.3 s without packets
    client.incoming.put(None)
    handler.join(timeout=5)
    assert handler.dead


# --- sends from another thread -----------------------------------------------------------------------------------

START_THREAD = gevent.monkey.get_original("_thread", "start_new_thread")  # an OS thread, even monkey-patched


def in_a_thread(work):
    """Runs work() in an OS thread of its own while this (the event loop's) thread keeps running its greenlets;
    returns what work() returned, or raised."""
    outcome = []

    def run():
        try:
            outcome.append(("returned", work()))
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            outcome.append(("raised", exc))

    START_THREAD(run, ())
    with gevent.Timeout(10):
        while not outcome:
            gevent.sleep(0.005)
    return outcome[0]


def test_a_send_from_another_thread_goes_out_in_order():
    client = Client()
    sock, handler = open_socket(client)
    sock.send(message(0))  # from the loop's own thread

    def sends():
        for i in range(1, 6):
            sock.send(message(i))
        return "sent"

    assert in_a_thread(sends) == ("returned", "sent")  # each send ran in the loop's thread, the caller waiting
    sock.send(message(6))
    assert [data for _, data in client.read_frames(7)] == [encoded(message(i)) for i in range(7)]
    client.incoming.put(None)
    handler.join(timeout=5)
    assert handler.dead


def test_control_without_handing_the_send_to_the_loop_it_is_lost_without_an_error(monkeypatch):
    """What the hand-over prevents: the outbox of the calling thread's own (new) hub is never run, and the
    packet never leaves, with no error anywhere."""
    client = Client()
    sock, handler = open_socket(client)
    monkeypatch.setattr(websocket_writes, "THREAD_IDENT", lambda: sock.queue.hub.thread_ident)  # "same thread"
    try:
        assert in_a_thread(lambda: sock.send(message(1))) == ("returned", None)
        with pytest.raises(gevent.Timeout):
            client.read_frames(1, timeout=0.5)
        assert len(websocket_writes.OUTBOX.items) == 1  # stuck: and later sends would wait behind it
    finally:
        websocket_writes.OUTBOX.items = []
    client.incoming.put(None)
    handler.join(timeout=5)


def test_a_close_from_another_thread_writes_what_was_sent_then_closes():
    client = Client()
    sock, handler = open_socket(client)

    def send_then_close():
        sock.send(message(1))
        return sock.close(wait=False)

    assert in_a_thread(send_then_close) == ("returned", None)
    frames = client.read_frames(3)
    assert frames[:2] == [(gws.WebSocket.OPCODE_TEXT, encoded(message(1))), (gws.WebSocket.OPCODE_TEXT, b"1")]
    assert frames[2][0] == gws.WebSocket.OPCODE_CLOSE
    client.incoming.put(None)
    handler.join(timeout=5)
    assert handler.dead


def test_a_send_from_another_thread_while_the_loop_is_blocked_waits_a_bounded_time_then_goes_out(caplog):
    """The loop's thread blocked (not waiting in gevent): the other thread's send waits PING_INTERVAL +
    PING_TIMEOUT, goes on with one warning, and the packet goes out once the loop runs again."""
    client = Client()
    server = engineio.Server(async_mode="gevent", ping_interval=0.2, ping_timeout=0.1)
    sock = engineio_socket.Socket(server, "sid-1")
    handler = gevent.spawn(sock._websocket_handler, client)
    gevent.sleep(0.01)
    assert sock.direct is not None
    sock.last_ping = None  # no ping pending: the blocked loop must not look like a client gone silent
    returned = []
    START_THREAD(lambda: returned.append(sock.send(message(1))), ())
    gevent.monkey.get_original("time", "sleep")(0.8)  # blocks this thread, and so the loop
    assert returned == [None]  # it did not wait for ever
    assert [r.getMessage() for r in caplog.records if "from another thread" in r.getMessage()] == [
        "sid-1: a send() from another thread waited 0.3 s for the event loop; it runs when the loop does"
    ]
    assert client.read_frames(1) == [(gws.WebSocket.OPCODE_TEXT, encoded(message(1)))]
    client.incoming.put(None)
    handler.join(timeout=5)


@pytest.mark.parametrize("ours", [True, False], ids=["websocket_writes' send", "control: engineio's send"])
def test_a_send_from_another_thread_to_a_closed_socket_raises_there_as_engineio_s(ours):
    if not ours:
        websocket_writes.install(
            None, None, Settings.from_env({"APP_ENV": "development", "WEBSOCKET_DIRECT_SEND": "false"})
        )
    client = Client()
    sock, handler = open_socket(client, direct=ours)
    sock.close(wait=False)
    kind, value = in_a_thread(lambda: sock.send(message(1)))
    assert kind == "raised" and isinstance(value, engineio.exceptions.SocketIsClosedError), (kind, value)
    client.incoming.put(None)
    handler.join(timeout=5)


def test_the_app_installs_it(app):
    assert engineio_socket.Socket.send is websocket_writes.send
    assert engineio_socket.Socket.poll is websocket_writes.poll
    assert engineio_socket.Socket.close is websocket_writes.close
    assert Settings.websocket_direct_send is True


def queued_packets_max(instance_url):
    text = requests.get(instance_url + "/metrics", timeout=5).text
    (family,) = (f for f in text_string_to_metric_families(text) if f.name == "socketio_queued_packets_max")
    return family.samples[0].value


def test_through_the_stack_a_client_that_stops_reading_holds_up_no_one(own_stack, clients):
    """One instance, so both clients share its event loop. 40 broadcasts of 900 KB (36 MB) to a client that
    reads nothing: far more than the buffers on the way hold (its own 4 KB; `ss -tm` during this test showed
    about 4 MB queued on each of two sockets, and 0.6 MB in HAProxy's), so the instance's sends meet a full
    buffer and the rest waits in the instance's queue for that client."""
    stack = own_stack(replicas=1)
    url, instance_url = stack.status()["url"], stack.status()["apps"][0]["url"]
    slow = websocket.create_connection(
        url.replace("http", "ws", 1) + "/socket.io/?EIO=4&transport=websocket",
        timeout=20,
        skip_utf8_validation=True,
        sockopt=((socket.SOL_SOCKET, socket.SO_RCVBUF, 4096),),
    )
    try:
        assert slow.recv().startswith("0")  # Engine.IO OPEN
        slow.send("40")
        assert slow.recv().startswith("40")  # Socket.IO CONNECT accepted
        fast = clients(url, transports=["websocket"])
        assert queued_packets_max(instance_url) == 0
        count, pad = 40, "x" * 900_000
        for i in range(count):
            assert fast.call("broadcast", {"i": i, "pad": pad}) == {"ok": True}
        assert fast.wait_for("broadcast", lambda data: data["i"] == count - 1, timeout=30)
        assert [data["i"] for data in fast.events("broadcast")] == list(range(count))
        assert fast.call("whoami")  # and the instance still answers at once
        waiting = struct.unpack("i", fcntl.ioctl(slow.sock.fileno(), termios.FIONREAD, b"\0" * 4))[0]
        assert waiting < count * len(pad) // 10  # the slow client really had not read: nearly all is upstream
        assert queued_packets_max(instance_url) > 0  # and part of it waits in the instance, for its writer
        received = []
        while len(received) < count:  # it reads at last: every broadcast, whole and in order
            message = slow.recv()
            if message == "2":
                slow.send("3")
            elif message.startswith('42["broadcast"'):
                event, data = json.loads(message[2:])
                assert data["pad"] == pad
                received.append(data["i"])
        assert received == list(range(count))
        deadline = time.monotonic() + 10
        while queued_packets_max(instance_url) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert queued_packets_max(instance_url) == 0
    finally:
        slow.close()
