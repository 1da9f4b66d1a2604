"""Structured log lines: the formats in process, then a stack with LOG_FORMAT=json whose instance log file
must hold one JSON line per connect, disconnect and refusal."""

import io
import json
import logging
import time
import uuid
from pathlib import Path

import pytest
import requests
import socketio

from deployment.operations import logs
from deployment.settings import ConfigError, Settings


def record(msg="connect", level=logging.INFO, **fields):
    rec = logging.LogRecord("realtime.socket", level, __file__, 1, msg, (), None)
    rec.fields = {"event": msg, **fields}
    rec.instance = "app7"
    return rec


def test_json_format_is_one_object_per_line_with_the_fields():
    line = logs.JsonFormatter().format(record(sid="abc", client="203.0.113.9", note='quote " and\nnewline'))
    assert "\n" not in line
    data = json.loads(line)
    assert data["event"] == "connect" and data["msg"] == "connect" and data["level"] == "INFO"
    assert data["instance"] == "app7" and data["sid"] == "abc" and data["client"] == "203.0.113.9"
    assert data["ts"].endswith("+00:00")


def test_json_format_keeps_the_traceback_in_the_line():
    try:
        raise ValueError("bad")
    except ValueError:
        import sys

        rec = record("handler_error", logging.ERROR, handler="say")
        rec.exc_info = sys.exc_info()
    data = json.loads(logs.JsonFormatter().format(rec))
    assert data["handler"] == "say" and "ValueError: bad" in data["exc"]


def test_text_format_is_key_value():
    formatter = logs.TextFormatter()
    line = formatter.format(record("disconnect", sid="abc", reason="transport close", client=""))
    assert line.endswith('[app7]: disconnect sid=abc reason="transport close" client=""')
    assert "event=" not in line


def test_log_format_setting():
    assert Settings.from_env({"APP_ENV": "development"}).log_format == "text"
    assert Settings.from_env({"APP_ENV": "development", "LOG_FORMAT": "JSON"}).log_format == "json"
    with pytest.raises(ConfigError, match="LOG_FORMAT"):
        Settings.from_env({"APP_ENV": "development", "LOG_FORMAT": "xml"})


def test_setup_installs_one_handler_and_switches_format():
    stream = io.StringIO()
    root = logging.getLogger()
    try:
        settings = Settings.from_env({"APP_ENV": "development", "INSTANCE_NAME": "one", "LOG_FORMAT": "json"})
        handler = logs.setup(settings, stream=stream)
        assert logs.setup(settings) is handler  # idempotent: tests build many apps in one process
        assert sum(isinstance(h, logs.Handler) for h in root.handlers) == 1
        logs.socket_event("connect", sid="s1", namespace="/", client="198.51.100.1", transport="polling")
        assert json.loads(stream.getvalue().splitlines()[-1])["sid"] == "s1"
        logs.setup(Settings.from_env({"APP_ENV": "development", "INSTANCE_NAME": "two"}))
        logs.socket_event("refused", logging.WARNING, sid="s2", reason="no")
        assert stream.getvalue().splitlines()[-1].endswith("[two]: refused sid=s2 reason=no")
    finally:
        for handler in [h for h in root.handlers if isinstance(h, logs.Handler)]:
            root.removeHandler(handler)


def test_client_address_is_the_first_forwarded_hop():
    assert logs.client_address({"HTTP_X_FORWARDED_FOR": "203.0.113.9, 10.0.0.2", "REMOTE_ADDR": "10.0.0.3"}) == (
        "203.0.113.9"
    )
    assert logs.client_address({"REMOTE_ADDR": "10.0.0.3"}) == "10.0.0.3"
    assert logs.client_address(None) == ""


def test_connection_lines_in_process(caplog):
    from stack_app import create_app
    from stack_app import socketio as server

    from deployment.settings import Settings

    app = create_app(Settings.from_env({"APP_ENV": "development", "INSTANCE_NAME": "unit", "REQUIRE_LOGIN": "true"}))
    http = app.test_client()
    assert http.post("/login", json={"name": "lena"}).status_code == 200
    with caplog.at_level("INFO", logger="realtime.socket"):
        client = server.test_client(app, flask_test_client=http)
        assert not server.test_client(app).is_connected()  # not signed in: the login gate refuses it
        client.disconnect()
    lines = [(r.getMessage(), r.fields) for r in caplog.records if r.name == "realtime.socket"]
    kinds = [kind for kind, _fields in lines]
    assert kinds == ["connect", "refused", "disconnect"]
    assert lines[1][1]["reason"].startswith("sign in first")
    assert lines[2][1]["reason"] == "client disconnect"
    assert all(fields["namespace"] == "/" and fields["sid"] for _kind, fields in lines)


def test_connection_lines_for_every_namespace_whatever_its_handlers(caplog):
    """A namespace with events but no connect or disconnect handler, a class-based one, one registered after
    init_app: each connection and disconnection gets its line (the handlers are wrapped as they are registered,
    and a namespace without a connect handler gets one that hands over to its class, as python-socketio would)."""
    from flask import Flask
    from flask_socketio import Namespace, SocketIO

    from deployment.extension import Deployment

    connected = []

    class Board(Namespace):
        def on_connect(self, auth=None):
            connected.append("board")

    app, server = Flask("lines"), SocketIO()
    server.on("hello", namespace="/events")(lambda _data=None: "hi")
    server.on_namespace(Board("/board"))
    Deployment().init_app(app, server, Settings.from_env({"APP_ENV": "development", "INSTANCE_NAME": "unit"}))
    server.on("hello", namespace="/late")(lambda _data=None: "hi")
    with caplog.at_level("INFO", logger="realtime.socket"):
        for namespace in ("/events", "/board", "/late"):
            client = server.test_client(app, namespace=namespace)
            assert client.is_connected(namespace)
            client.disconnect(namespace=namespace)
    lines = [(r.getMessage(), r.fields["namespace"]) for r in caplog.records if r.name == "realtime.socket"]
    assert lines == [(kind, ns) for ns in ("/events", "/board", "/late") for kind in ("connect", "disconnect")]
    assert connected == ["board"]  # the class's own connect handler ran, once


# --- a stack with LOG_FORMAT=json ------------------------------------------------------------------------


def json_lines(path):
    found = []
    for line in Path(path).read_text().splitlines():
        if line.startswith("{"):
            found.append(json.loads(line))  # a line that starts like JSON must be JSON
    return found


def test_json_logs_of_a_running_instance(own_stack):
    stack = own_stack(replicas=1, LOG_FORMAT="json", REQUIRE_LOGIN="true")
    status = stack.status()
    url = status["url"]
    http = requests.Session()
    assert http.post(url + "/login", json={"name": f"json-{uuid.uuid4().hex[:4]}"}, timeout=5).status_code == 200
    client = socketio.Client(reconnection=False, http_session=http)
    client.connect(url, headers={"X-Forwarded-For": "203.0.113.77"}, wait_timeout=10)
    sid = client.get_sid()
    client.disconnect()
    refused = socketio.Client(reconnection=False)
    with pytest.raises(socketio.exceptions.ConnectionError):  # not signed in: the login gate refuses it
        refused.connect(url, wait_timeout=5)

    log_file = Path(status["logs"]) / "app1.log"
    deadline = time.monotonic() + 10
    while True:
        lines = [line for line in json_lines(log_file) if line.get("logger") == "realtime.socket"]
        events = {(line["event"], line.get("sid")) for line in lines}
        if {("connect", sid), ("disconnect", sid)} <= events and any(line["event"] == "refused" for line in lines):
            break
        assert time.monotonic() < deadline, f"missing connection lines in {log_file}: {lines}"
        time.sleep(0.2)
    connect = next(line for line in lines if line["event"] == "connect" and line["sid"] == sid)
    disconnect = next(line for line in lines if line["event"] == "disconnect" and line["sid"] == sid)
    refusal = next(line for line in lines if line["event"] == "refused")
    assert connect["instance"] == "app1" and connect["client"] == "203.0.113.77" and connect["namespace"] == "/"
    assert connect["transport"] in ("polling", "websocket")
    assert disconnect["client"] == "203.0.113.77"
    assert disconnect["reason"] in ("client disconnect", "transport close")  # python-socketio closes fast
    assert refusal["level"] == "WARNING" and refusal["reason"].startswith("sign in first")
    assert refusal["client"] == "127.0.0.1"  # no X-Forwarded-For from the client: HAProxy's own view
    # the app's other lines are JSON too (start-up config, access lines)
    assert any(line.get("msg", "").startswith("effective config") for line in json_lines(log_file))
