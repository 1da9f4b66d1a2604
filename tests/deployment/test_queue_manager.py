"""The Redis queue's manager (deployment/operations/queue_manager.py) against a redis-server of its own that a test
hangs (SIGSTOP), stops and restarts, with python-socketio's own RedisManager as the control; and
CONNECTION_STATE_RECOVERY, which runs or refuses the start with one line (deployment/operations/recovery.py).

Waits are bounded (thread joins, timeouts): nothing here asserts on speed beyond "returns within about
SOCKET_TIMEOUT" against "still waiting after twice that"."""

import importlib.metadata
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis
import requests
import socketio
from native_stack import free_port, port_is_free, redis_server_argv, wait_for
from test_gunicorn_conf import output, start

from deployment.operations import message_queue, recovery
from deployment.operations.queue_manager import RETRY_SECONDS, SOCKET_TIMEOUT, QueueManager
from deployment.patches import connection_recovery
from deployment.settings import ConfigError, Settings

# the full tier (tests/conftest.py): this module starts processes of the stack
pytestmark = pytest.mark.stack

ROOT = Path(__file__).resolve().parents[2]
GUNICORN = str(Path(sys.executable).with_name("gunicorn"))


class RedisServer:
    """A redis-server on a free loopback port: hang() / resume() (SIGSTOP / SIGCONT), stop(), start()."""

    def __init__(self, folder):
        self.folder = folder
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = None
        self.start()

    def start(self):
        wait_for(lambda: port_is_free(self.port), 10, "the Redis port to be free")
        self.proc = subprocess.Popen(
            redis_server_argv(self.port, self.folder), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for(lambda: not port_is_free(self.port), 10, "redis-server to listen")

    def hang(self):
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self):
        self.proc.send_signal(signal.SIGCONT)

    def stop(self):
        self.resume()
        self.proc.kill()
        self.proc.wait(timeout=10)


@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(tmp_path)
    yield server
    server.stop()


class Timed:
    """fn() in a daemon thread: join(timeout) says whether it returned within `timeout`."""

    def __init__(self, fn):
        self.result = self.error = self.seconds = None
        self.done = threading.Event()
        self.started = time.monotonic()
        threading.Thread(target=self._run, args=(fn,), daemon=True).start()

    def _run(self, fn):
        try:
            self.result = fn()
        except Exception as exc:  # noqa: BLE001 - reported
            self.error = exc
        self.seconds = time.monotonic() - self.started
        self.done.set()

    def join(self, timeout):
        return self.done.wait(timeout)


class Lines(logging.Handler):
    def __init__(self, name):
        super().__init__(logging.DEBUG)
        self.lines = []
        self.logger = logging.getLogger(name)

    def emit(self, record):
        self.lines.append((record.levelname, record.getMessage()))

    def __enter__(self):
        self.logger.addHandler(self)
        self.level, self.logger.level = self.logger.level, logging.DEBUG
        return self

    def __exit__(self, *exc):
        self.logger.removeHandler(self)
        self.logger.level = self.level

    def warnings(self, text):
        return [line for level, line in self.lines if level == "WARNING" and text in line]


# --- the manager is a python-socketio backend, not a replacement -----------------------------------------------


def test_the_manager_is_a_pubsub_backend_that_replaces_no_redis_manager_method():
    assert issubclass(QueueManager, socketio.PubSubManager)
    assert not issubclass(QueueManager, socketio.RedisManager)
    # what a backend implements (python-socketio's pubsub_manager.py: "must be implemented by subclasses")
    assert {"_publish", "_listen"} <= set(vars(QueueManager))
    assert QueueManager.__module__ == "deployment.operations.queue_manager"
    assert not (ROOT / "deployment" / "patches" / "queue_manager.py").exists()


def test_outage_handling_runs_whatever_the_python_socketio_version(monkeypatch):
    """No pin: with a python-socketio version nothing was verified against, the queue is still this manager."""
    real = importlib.metadata.version
    monkeypatch.setattr(
        importlib.metadata, "version", lambda name: "5.99.0" if name == "python-socketio" else real(name)
    )
    manager = message_queue.queue_manager(f"redis://127.0.0.1:{free_port()}/0", channel="c")
    assert type(manager) is QueueManager
    assert manager.connect_redis is message_queue.redis_client  # Sentinel URLs work the same way


# --- a hung Redis -------------------------------------------------------------------------------------------


def test_publish_to_a_hung_redis_returns_within_the_socket_timeout_and_drops(redis_server):
    manager = message_queue.queue_manager(redis_server.url, channel="hang")
    with Lines("realtime.queue") as log:
        assert manager._publish({"n": 0}) == 0  # Redis up: delivered (no subscriber)
        redis_server.hang()
        try:
            first = Timed(lambda: manager._publish({"n": 1}))
            assert first.join(SOCKET_TIMEOUT * 2), "a publish to a hung Redis did not return"
            next_one = Timed(lambda: manager._publish({"n": 2}))  # Redis known down: dropped without waiting
            assert next_one.join(SOCKET_TIMEOUT), "a publish while Redis is known down waited"
        finally:
            redis_server.resume()
        print(f"hung Redis: first publish returned after {first.seconds:.2f}s, the next after {next_one.seconds:.3f}s")
        assert first.error is None and first.result is None  # dropped, not raised: None is what metrics count
        assert next_one.error is None and next_one.result is None
        assert manager.dropped == 2
        assert len(log.warnings("unreachable (TimeoutError")) == 1, log.lines
        time.sleep(RETRY_SECONDS)
        assert manager._publish({"n": 3}) == 0  # delivered again
        assert len(log.warnings("reachable again")) == 1, log.lines
        assert "2 messages for other instances were dropped" in log.warnings("reachable again")[0]


def test_control_python_socketio_redis_manager_publish_waits_on_a_hung_redis(redis_server):
    """The same hang with python-socketio's own RedisManager: its publish is still waiting after twice
    SOCKET_TIMEOUT (it retries once, each attempt bounded only by redis-py's default socket timeout)."""
    manager = socketio.RedisManager(redis_server.url, channel="hang")
    assert manager._publish({"n": 0}) == 0
    redis_server.hang()
    try:
        publish = Timed(lambda: manager._publish({"n": 1}))
        assert not publish.join(SOCKET_TIMEOUT * 2), f"returned after {publish.seconds}s"
        waited = time.monotonic() - publish.started
    finally:
        redis_server.resume()
    assert publish.join(30)
    print(
        f"control: RedisManager's publish still waiting after {waited:.2f}s, returned {publish.seconds:.2f}s "
        "after it started (once Redis went on)"
    )


def test_listener_subscribes_again_within_about_a_second_of_redis_restarting(redis_server):
    class Server:
        sleep = staticmethod(time.sleep)

    manager = message_queue.queue_manager(redis_server.url, channel="relisten")
    manager.server = Server()
    received = []
    with Lines("realtime.queue") as log:
        listener = manager._listen()
        threading.Thread(target=lambda: received.extend(listener), daemon=True).start()
        sender = redis.Redis.from_url(redis_server.url, socket_timeout=2)
        wait_for(lambda: sender.pubsub_numsub("relisten")[0][1] == 1, 10, "the subscription")
        sender.publish("relisten", b"before")
        wait_for(lambda: b"before" in received, 5, "the message published before")
        redis_server.stop()
        time.sleep(RETRY_SECONDS * 2)
        redis_server.start()
        back = time.monotonic()
        sender = redis.Redis.from_url(redis_server.url, socket_timeout=2)
        wait_for(lambda: sender.pubsub_numsub("relisten")[0][1] == 1, 10, "the subscription again")
        print(f"subscribed again {time.monotonic() - back:.2f}s after Redis restarted")
        sender.publish("relisten", b"after")
        wait_for(lambda: b"after" in received, 5, "the message published after the restart")
    assert received == [b"before", b"after"]
    assert len(log.warnings("subscription lost")) == 1, log.lines
    assert len(log.warnings("subscribed again")) == 1, log.lines


# --- CONNECTION_STATE_RECOVERY: runs, or refuses the start with one line --------------------------------------


def recovery_settings(**env):
    return Settings.from_env(
        {
            "APP_ENV": "development",
            "INSTANCE_NAME": "unit",
            "CONNECTION_STATE_RECOVERY": "true",
            "REDIS_WAIT_SECONDS": "0",
            "SPEEDUPS": "false",
            **env,
        }
    )


def init_app(settings):
    from flask import Flask
    from flask_socketio import SocketIO

    from deployment.extension import Deployment

    app, sio = Flask("recovery-check"), SocketIO()
    Deployment().init_app(app, sio, settings)
    return app, sio


def unverified(monkeypatch):
    real = importlib.metadata.version
    monkeypatch.setattr(
        importlib.metadata, "version", lambda name: "5.99.0" if name == "python-socketio" else real(name)
    )


def assert_refusal_line(text, found="python-socketio 5.99.0"):
    assert "CONNECTION_STATE_RECOVERY=true" in text and "\n" not in text, text
    assert found in text and f"flask-socketio {importlib.metadata.version('flask-socketio')}" in text, text
    assert "verified against python-socketio 5.18.1, flask-socketio 5.7.0" in text, text
    assert "CONNECTION_STATE_RECOVERY=false" in text and "install the verified versions" in text, text


def test_recovery_with_an_unverified_python_socketio_refuses_the_start_with_one_line(monkeypatch, redis_server):
    unverified(monkeypatch)
    with pytest.raises(ConfigError) as refused:
        init_app(recovery_settings(REDIS_URL=redis_server.url))
    assert_refusal_line(str(refused.value))
    with pytest.raises(ConfigError):  # the emit command's manager too
        message_queue.queue_manager(redis_server.url, channel="c", write_only=True, recovery_window=120)


def test_recovery_with_an_unverified_flask_socketio_refuses_the_start(monkeypatch):
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "5.9.0" if name == "flask-socketio" else real(name))
    with pytest.raises(ConfigError, match="found python-socketio 5.18.1, flask-socketio 5.9.0: "):
        recovery.check(recovery_settings(REDIS_URL="redis://127.0.0.1:9/0"))


def test_recovery_without_redis_url_refuses_the_start():
    with pytest.raises(ConfigError) as refused:
        init_app(recovery_settings())
    assert str(refused.value).startswith("CONNECTION_STATE_RECOVERY=true needs REDIS_URL"), refused.value


def test_control_recovery_with_the_verified_versions_runs(redis_server):
    app, sio = init_app(recovery_settings(REDIS_URL=redis_server.url))
    assert type(sio.server.manager) is recovery.RecoveryManager
    assert isinstance(sio.server.manager, QueueManager)  # the queue's outage handling, with the recovery stream
    assert sio.server._handle_connect.__func__ is connection_recovery.handle_connect  # (serving: under gunicorn below)
    assert app.extensions["deployment"].settings.connection_state_recovery
    sio.server.manager.store.client.close()


def test_refusal_imports_no_library_so_gunicorns_master_can_call_it():
    code = (
        "import sys; from deployment.patches import connection_recovery as c; c.refusal(''); c.refusal('redis://x');"
        "print(sorted(m for m in ('socketio', 'flask_socketio', 'flask', 'redis', 'gevent') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr


# --- the same under gunicorn ----------------------------------------------------------------------------------

FAKE_VERSION = """
import importlib.metadata

_real = importlib.metadata.version


def _version(name):
    return "5.99.0" if name == "python-socketio" else _real(name)


importlib.metadata.version = _version
"""


def gunicorn(tmp_path, redis_url, fake_version):
    """One instance started by test_gunicorn_conf's start(), with CONNECTION_STATE_RECOVERY on."""
    pythonpath = ""  # the caller's PYTHONPATH is not the instance's
    if fake_version:  # python-socketio reports a version connection_recovery was not verified against
        folder = tmp_path / "fake-version"
        folder.mkdir()
        (folder / "sitecustomize.py").write_text(FAKE_VERSION)
        pythonpath = str(folder)
    return start(
        tmp_path,
        PYTHONPATH=pythonpath,
        APP_ENV="production",
        INSTANCE_NAME="recovering",
        REDIS_URL=redis_url,
        REDIS_WAIT_SECONDS="5",
        CONNECTION_STATE_RECOVERY="true",
        PYTHONUNBUFFERED="1",
    )


def test_gunicorn_with_recovery_on_an_unverified_version_stops_with_the_line(tmp_path, redis_server):
    proc, _, log = gunicorn(tmp_path, redis_server.url, fake_version=True)
    try:
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    text = output(log)
    print(text[-3000:])
    assert code != 0, text
    # the line on its own: from the worker (gunicorn prints its start error alone after the traceback), or from
    # gunicorn.conf.py in the master ("configuration error: ...", before any worker)
    lines = [line.removeprefix("configuration error: ") for line in text.splitlines()]
    lines = [line for line in lines if line.startswith("CONNECTION_STATE_RECOVERY=true")]
    assert lines, text
    assert_refusal_line(lines[0])
    assert text.count("Booting worker") <= 1, text  # it stops: no boot loop


def test_control_gunicorn_with_recovery_on_the_verified_versions_serves(tmp_path, redis_server):
    proc, port, log = gunicorn(tmp_path, redis_server.url, fake_version=False)
    try:
        ready = False
        deadline = time.monotonic() + 30
        while not ready and time.monotonic() < deadline and proc.poll() is None:
            try:
                ready = requests.get(f"http://127.0.0.1:{port}/readyz", timeout=1).json()["message_queue"] == "ok"
            except (requests.RequestException, ValueError):
                time.sleep(0.2)
        assert ready, output(log)
        client = socketio.Client(reconnection=False)
        client.connect(f"http://127.0.0.1:{port}", transports=["websocket"], wait_timeout=10)
        try:
            assert client.call("echo", {"n": 1}, timeout=5) == {"n": 1}
        finally:
            client.disconnect()
        text = output(log)
        assert "connection state recovery on" in text, text
        assert "CONNECTION_STATE_RECOVERY=true:" not in text
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
