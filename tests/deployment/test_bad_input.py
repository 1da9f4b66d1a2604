"""Bad input at ONE process (a one-instance stack, so attacker and well-behaved clients share it): a corpus of
malformed Engine.IO/Socket.IO packets over polling and WebSocket, random fuzz, oversized payloads, an event
flood, thousands of room joins, slow clients. Each gets a clear reaction (an `error` event, an error ack,
400/408/413, or its own connection closed); the process stays up and the other clients keep echoing."""

import socket
import threading
import time

import pytest
from flask import Flask
from flask_socketio import SocketIO
from native_stack import Stack, free_port
from scenarios_faults import Load, flood, join_many, polling_outcome, scenario_bad_input, stack_env

from deployment.operations import limits
from deployment.settings import Settings

# the full tier (tests/conftest.py): this module starts processes of the stack
pytestmark = pytest.mark.stack

# Socket.IO-level garbage on a connected session: an `error` event, the session keeps working
SOCKETIO_GARBAGE = [
    "not JSON",
    "truncated JSON",
    "empty event array",
    "event object",
    "event without data",
    "deeply nested JSON",
    "deeply nested Engine.IO JSON",
    "Socket.IO type not a digit",
    "unknown Socket.IO type",
    "CONNECT_ERROR from a client",
]
# Engine.IO-level garbage: that session is closed (over polling, its next request gets 400)
ENGINEIO_GARBAGE = ["Engine.IO type not a digit", "unknown Engine.IO type"]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """One instance behind HAProxy, 64 KiB buffer limit, the per-address limits as shipped: the fuzzer's
    hundreds of connections and sessions from 127.0.0.1 stay within them."""
    stack = Stack(
        state_dir=tmp_path_factory.mktemp("one-process"),
        port=free_port(),
        replicas=1,
        env=stack_env(MAX_HTTP_BUFFER_SIZE=65536),
    )
    stack.up()
    yield stack
    stack.down()


def test_corpus_fuzz_floods_and_big_payloads_leave_other_clients_alone(one_process):
    result = scenario_bad_input(one_process, fuzz=300, flood_events=3000, rooms=120)
    print(result)
    victims, process = result["victims"], result["process"]
    # the process and its well-behaved clients: unharmed (compared, not timed: generous bound only)
    assert process["same_pids"] and process["alive"] and process["healthz"] == 200, process
    assert process["worker_boots"] == 1 and process["tracebacks_logged"] == 0, process
    assert victims["echoes_during"] > 20 and victims["failed_during"] == 0 and victims["disconnects"] == 0, victims
    assert victims["max_during_ms"] < 5000, victims
    # each piece of garbage got a clear reaction
    for name in SOCKETIO_GARBAGE:
        for transport in ("polling", "websocket"):
            outcome = result[transport][name]
            assert outcome.get("error_event") and outcome.get("echo_ok"), (transport, name, outcome)
    for name in ENGINEIO_GARBAGE:
        assert result["websocket"][name]["closed"], name
        assert result["polling"][name] == {"post": 200, "echo_post": 400}, name
    assert result["websocket"]["empty Engine.IO packet"]["closed"]  # over polling, an empty body is a no-op
    assert result["oversized"] == {
        "polling_status": 413,
        "websocket": {"closed": True, "error_event": False},
        "under_limit_echo": True,
    }
    # the flood: a burst served, the rest refused with error acks, then the flooder is disconnected
    assert result["flood"]["refused_acks"] > 0 and result["flood"]["acked"] < 1000, result["flood"]
    assert result["flood"]["disconnected"], result["flood"]
    assert result["rooms"]["joined"] == 50 and result["rooms"]["refused"] == 70, result["rooms"]
    assert "room limit" in result["rooms"]["error"]


def test_control_with_limits_off_the_flood_and_the_joins_go_through(own_stack):
    stack = own_stack(replicas=1, EVENT_RATE=0, MAX_ROOMS_PER_CLIENT=0)
    url = stack.status()["url"]
    flooded = flood(url, events=3000)
    print(flooded)
    assert flooded["acked"] == 3000 and not flooded["disconnected"], flooded
    joined = join_many(url, rooms=120)
    assert joined["joined"] == 120, joined


def test_unknown_event_gets_an_error_ack(one_process, clients):
    client = clients(one_process.status()["url"])
    assert client.call("no-such-event", {"x": 1}) == {"error": "unknown event 'no-such-event'"}
    assert client.call("echo", "still here") == "still here"


def test_forged_and_unknown_sids_are_refused(one_process):
    url = one_process.status()["url"]
    import requests

    for sid in ("AAAAAAAAAAAAAAAAAAAA", "../../etc", "x" * 5000):
        reply = requests.post(f"{url}/socket.io/?EIO=4&transport=polling&sid={sid}", data="40", timeout=5)
        assert reply.status_code == 400, (sid[:20], reply.status_code)
    # another client's sid over a fresh connection without its cookie: HAProxy routes by cookie only, so
    # with one instance the request does reach the session; Engine.IO sids are 20 random url-safe characters
    assert polling_outcome(url, '42["echo","x"]')["post"] == 200


def slow_sockets(host, port, count, body):
    """Opens `count` connections that send a request very slowly (headers, or a body if `body`)."""
    sockets = []
    for _ in range(count):
        sock = socket.create_connection((host, port), timeout=5)
        if body:
            sock.sendall(
                b"POST /socket.io/?EIO=4&transport=polling&sid=x HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n4"
            )
        else:
            sock.sendall(b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\n")
        sockets.append((sock, b"2" if body else b"X-a: b\r\n"))
    return sockets


def trickle(sockets, stop):
    """One more piece per connection per second: never idle, never done."""
    while not stop.is_set():
        for sock, piece in sockets:
            try:
                sock.send(piece)
            except OSError:
                pass
        stop.wait(1)


def closed_sockets(sockets):
    closed = 0
    for sock, _ in sockets:
        sock.setblocking(False)
        try:
            data = sock.recv(4096)
            closed += not data or data.startswith(b"HTTP/1.1 408")
        except BlockingIOError:
            pass
        except OSError:
            closed += 1
    return closed


@pytest.mark.parametrize("through", ["haproxy", "control-app-directly"])
def test_slowloris_is_cut_by_haproxy_and_other_clients_keep_echoing(one_process, through):
    status = one_process.status()
    url = status["url"] if through == "haproxy" else status["apps"][0]["url"]
    host, port = url.removeprefix("http://").split(":")
    victims = Load(status["url"], 2, interval=0.1, polling_every=2).start()
    sockets = slow_sockets(host, int(port), 150, body=False) + slow_sockets(host, int(port), 50, body=True)
    stop = threading.Event()
    feeder = threading.Thread(target=trickle, args=(sockets, stop), daemon=True)
    feeder.start()
    try:
        start = time.monotonic()
        time.sleep(12)  # HAProxy's timeout http-request is 10s
        closed = closed_sockets(sockets)
        failed = sum(1 for c in victims.clients for t, lat in c.echoes if t >= start and lat is None)
        disconnects = sum(len(c.disconnects) for c in victims.clients)
    finally:
        stop.set()
        feeder.join()
        for sock, _ in sockets:
            sock.close()
        victims.stop()
    print(f"{through}: {closed} of {len(sockets)} slow connections closed after 12s; victims failed {failed}")
    assert failed == 0 and disconnects == 0
    if through == "haproxy":
        assert closed == len(sockets)
    else:  # gunicorn's pywsgi has no such timeout: the protection is HAProxy's
        assert closed < len(sockets) / 2


def test_handler_exceptions_become_error_acks_and_refused_connects(caplog):
    """Unit level: no demo event raises, so a throwaway app gets one that does."""
    settings = Settings.from_env({"APP_ENV": "development", "INSTANCE_NAME": "unit"})
    app = Flask(__name__)
    sio = SocketIO(app)
    limits.install(sio, settings)

    @sio.on("boom")
    def boom(_data=None):
        raise RuntimeError("bug")

    @sio.on("cap")
    def cap(_data=None):
        raise limits.ClientError("you asked too much")

    client = sio.test_client(app)
    for _ in range(3):
        assert client.emit("boom", 1, callback=True) == {"error": "internal error"}
    assert client.emit("cap", 1, callback=True) == {"error": "you asked too much"}
    assert client.emit("nope", 1, callback=True) == {"error": "unknown event 'nope'"}
    tracebacks = [r for r in caplog.records if r.name == "realtime.limits" and r.exc_info]
    assert len(tracebacks) == 1  # the next ones within 10s are counted, not printed

    @sio.on("connect", namespace="/guarded")
    def guarded_connect(auth=None):
        raise RuntimeError("auth backend down")

    refused = sio.test_client(app, namespace="/guarded")
    assert not refused.is_connected("/guarded")
