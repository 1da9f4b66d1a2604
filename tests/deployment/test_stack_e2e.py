"""End to end through the native stack: real HAProxy, Redis, gunicorn instances and Socket.IO clients."""

import os
import re
import signal
import time
import uuid

import pytest
import requests

HANDSHAKE = "/socket.io/?EIO=4&transport=polling"
COOKIE_RE = re.compile(r"^io=(?P<server>app\d+)~(?P<sid>[\w-]+); Path=/; HttpOnly; SameSite=Lax$")


def io_cookie(response):
    """The Set-Cookie line of the io cookie (the app sets its own uid/randomId cookies beside it)."""
    return next(line for line in response.raw.headers.getlist("Set-Cookie") if line.startswith("io="))


def polling_session_errors(url, sessions=6, requests_per_session=8):
    """Runs raw Engine.IO long-polling sessions the way a browser does (cookies kept) and counts the
    requests that fail. Each session: handshake, Socket.IO connect, then message/poll pairs."""
    errors = []
    for _ in range(sessions):
        http = requests.Session()
        response = http.get(url + HANDSHAKE, timeout=10)
        sid = re.search(r'"sid":"([^"]+)"', response.text).group(1)
        endpoint = f"{url}/socket.io/?EIO=4&transport=polling&sid={sid}"
        steps = [("post", "40"), ("get", None)]  # Socket.IO connect, then its CONNECT reply
        for ack_id in range(requests_per_session):  # an echo with an ack id, then the poll that brings the ack
            steps += [("post", f'42{ack_id}["echo",{ack_id}]'), ("get", None)]
        for method, body in steps:
            try:
                reply = http.post(endpoint, data=body, timeout=5) if method == "post" else http.get(endpoint, timeout=5)
            except requests.RequestException as exc:  # e.g. a poll waiting for an ack that went elsewhere
                errors.append(f"{method} {type(exc).__name__}")
                break
            if reply.status_code != 200:
                errors.append(f"{method} {reply.status_code} {reply.text[:60]}")
        http.post(endpoint, data="1", timeout=5)  # close the session
    return errors


def test_instances_run_with_the_speedups_asked_for(stack):
    """CI runs the end-to-end core twice, the second time with SPEEDUPS=off: each instance says which it runs."""
    from deployment.settings import FALSE_WORDS

    stock = os.environ.get("SPEEDUPS", "true").strip().lower() in FALSE_WORDS
    logs = sorted(stack.logs.glob("app*.log"))
    assert len(logs) == 3
    for log in logs:
        text = log.read_text()
        assert ("SPEEDUPS=off: the stock libraries run" in text) == stock, log
        assert ("speedups on: event_context" in text) == (not stock), log
        assert "stays off" not in text, log  # every replacement matches the installed versions


def test_handshake_through_haproxy_sets_prefixed_io_cookie(own_stack):
    # a fresh stack: leastconn spreads handshakes evenly only while no other test's clients are connected
    url = own_stack().status()["url"]
    seen = set()
    for _ in range(6):
        response = requests.get(url + HANDSHAKE, timeout=5)
        assert response.status_code == 200
        match = COOKIE_RE.match(io_cookie(response))
        assert match, io_cookie(response)
        assert f'"sid":"{match["sid"]}"' in response.text  # the cookie carries the Engine.IO sid
        seen.add(match["server"])
    assert seen == {"app1", "app2", "app3"}


def test_instance_sets_unprefixed_cookie_directly(stack):
    app1 = stack.status()["apps"][0]["url"]
    response = requests.get(app1 + HANDSHAKE, timeout=5)
    assert re.match(r"^io=[\w-]+; Path=/; HttpOnly; SameSite=Lax$", io_cookie(response))


def test_raw_polling_sessions_keep_working_through_sticky_cookie(stack):
    assert polling_session_errors(stack.status()["url"]) == []


def test_control_without_io_cookie_polling_fails(own_stack):
    """The same check against a stack whose app sends no io cookie: nothing to stick on, so requests
    land on instances that do not know the session."""
    stack = own_stack(IO_COOKIE="false")
    errors = polling_session_errors(stack.status()["url"])
    assert any("Invalid session" in error or "400" in error for error in errors), errors


@pytest.mark.parametrize("transports", [["polling"], None], ids=["polling-only", "upgrade-to-websocket"])
def test_python_clients_keep_working_for_many_requests(stack, clients, transports):
    url = stack.status()["url"]
    group = [clients(url, transports=transports) for _ in range(4)]
    for client in group:
        name = client.call("whoami")
        for i in range(25):
            payload = {"n": i, "text": "héllo", "list": [1, 2, 3]}
            assert client.call("echo", payload) == payload
        assert client.call("whoami") == name  # never moved to another instance
        expected = "polling" if transports == ["polling"] else "websocket"
        assert client.client.transport() == expected
    assert all(client.disconnects == 0 for client in group)


def test_clients_spread_over_instances_and_broadcast_reaches_all(stack, clients):
    url = stack.status()["url"]
    group = [clients(url) for _ in range(9)]
    instances = {client.call("whoami") for client in group}
    assert instances == {"app1", "app2", "app3"}
    token = uuid.uuid4().hex
    assert group[0].call("broadcast", {"token": token}) == {"ok": True}
    for client in group:
        assert client.wait_for("broadcast", lambda data: data == {"token": token}), client.call("whoami")


def test_room_say_reaches_members_on_every_instance_only(stack, clients):
    url = stack.status()["url"]
    group = [clients(url) for _ in range(9)]
    by_instance = {}
    for client in group:
        by_instance.setdefault(client.call("whoami"), []).append(client)
    members = [found[0] for found in by_instance.values()]  # one member per instance
    outsiders = [client for client in group if client not in members]
    room = f"room-{uuid.uuid4().hex[:8]}"
    for member in members:
        assert member.call("join", {"room": room}) == {"ok": True, "room": room}
    assert members[0].call("say", {"room": room, "message": "hi all"}) == {"ok": True}
    for member in members:
        assert member.wait_for("message", lambda data: data["room"] == room and data["message"] == "hi all")
    time.sleep(0.5)
    assert all(not outsider.events("message") for outsider in outsiders)


def test_control_without_message_queue_broadcast_stays_on_one_instance(own_stack, clients):
    """Cross-instance delivery is Redis's work: without it, other instances' clients get nothing."""
    stack = own_stack(message_queue=False)
    url = stack.status()["url"]
    group = [clients(url) for _ in range(6)]
    sender = group[0]
    sender_instance = sender.call("whoami")
    token = uuid.uuid4().hex
    sender.call("broadcast", {"token": token})
    assert sender.wait_for("broadcast", lambda data: data == {"token": token})
    time.sleep(1)
    others = [client for client in group if client.call("whoami") != sender_instance]
    assert others and all(not client.events("broadcast") for client in others)


def test_bad_event_input_gets_clear_error_and_connection_survives(stack, clients):
    client = clients(stack.status()["url"])
    assert client.call("join", {"room": ""}) == {"error": "join needs {'room': '<non-empty string>'}"}
    assert "error" in client.call("say", ["not", "a", "dict"])
    assert client.call("echo", "still here") == "still here"


def test_killed_instance_is_marked_down_and_its_clients_move(own_stack, clients):
    stack = own_stack()
    status = stack.status()
    url = status["url"]
    group = [clients(url, transports=transports) for transports in (["polling"], None) * 6]
    placement = {id(client): client.call("whoami") for client in group}
    victim_name = placement[id(group[0])]
    victim = next(app for app in status["apps"] if app["name"] == victim_name)
    assert stack.server_states()[victim_name].startswith("UP")

    os.killpg(victim["pid"], signal.SIGKILL)
    killed_at = time.monotonic()
    while not stack.server_states()[victim_name].startswith("DOWN"):
        assert time.monotonic() - killed_at < 10, "HAProxy did not mark the killed instance DOWN"
        time.sleep(0.1)
    print(f"marked DOWN after {time.monotonic() - killed_at:.1f}s")

    moved = [client for client in group if placement[id(client)] == victim_name]
    stayed = [client for client in group if placement[id(client)] != victim_name]
    assert moved and stayed
    for client in moved:
        deadline = time.monotonic() + 20
        while True:
            try:
                if client.client.connected and client.call("whoami", timeout=2) != victim_name:
                    break
            except Exception:
                pass
            assert time.monotonic() < deadline, "a client of the killed instance did not come back"
            time.sleep(0.2)
        assert client.disconnects >= 1
        assert client.call("echo", "back") == "back"
    for client in stayed:
        assert client.disconnects == 0
        assert client.call("whoami") == placement[id(client)]
