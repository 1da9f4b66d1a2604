"""gunicorn.conf.py's guards, checked by starting real gunicorn processes."""

import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import websocket
from native_stack import free_port

# the full tier (tests/conftest.py): this module starts processes of the stack
pytestmark = pytest.mark.stack

ROOT = Path(__file__).resolve().parents[2]
GUNICORN = str(Path(sys.executable).with_name("gunicorn"))


def start(tmp_path, **env):
    port = free_port()
    full_env = {k: v for k, v in os.environ.items() if k not in ("WEB_CONCURRENCY", "GUNICORN_CMD_ARGS")}
    full_env.update(SECRET_KEY=secrets.token_hex(32), BIND=f"127.0.0.1:{port}", INSTANCE_NAME="guarded")
    full_env.update(env)
    log = open(tmp_path / "gunicorn.log", "w+")
    proc = subprocess.Popen(
        [GUNICORN, "--config", "gunicorn.conf.py"],
        cwd=ROOT,
        env=full_env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return proc, port, log


def output(log):
    log.seek(0)
    return log.read()


def wait_healthy(port, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).ok:
                return
        except requests.RequestException:
            time.sleep(0.2)


def without_gevent_websocket(tmp_path):
    """PYTHONPATH whose sitecustomize blocks `import geventwebsocket`: the simple-websocket variant (the
    template's requirements.txt minus gevent-websocket) in the template's own venv."""
    folder = tmp_path / "no-gevent-websocket"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text("import sys\n\nsys.modules['geventwebsocket'] = None\n")
    return str(folder)


@pytest.mark.parametrize(
    "env",
    [{"GUNICORN_CMD_ARGS": "--workers 3"}, {"GUNICORN_CMD_ARGS": "-k gevent"}],
    ids=["three-workers", "plain-gevent-worker"],
)
def test_refuses_configurations_that_break_socketio(tmp_path, env):
    proc, _, log = start(tmp_path, **env)
    assert proc.wait(timeout=30) != 0
    assert "refusing" in output(log)


def test_web_concurrency_cannot_raise_workers(tmp_path):
    proc, port, log = start(tmp_path, WEB_CONCURRENCY="4")
    try:
        wait_healthy(port)
        text = output(log)
        assert '"workers": 1' in text  # the effective config printed at start
        assert text.count("Booting worker") == 1
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)


def test_production_without_secret_key_refuses_to_boot_with_clear_message(tmp_path):
    proc, _, log = start(tmp_path, SECRET_KEY="")
    assert proc.wait(timeout=30) != 0
    assert "SECRET_KEY is missing" in output(log)


def test_without_gevent_websocket_runs_plain_gevent_worker_and_simple_websocket(tmp_path):
    proc, port, log = start(tmp_path, PYTHONPATH=without_gevent_websocket(tmp_path))
    try:
        wait_healthy(port)
        assert '"worker_class": "gevent"' in output(log)
        ws = websocket.create_connection(f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket", timeout=5)
        try:
            assert ws.recv().startswith("0{")  # Engine.IO open, over simple-websocket
            ws.send("40")
            assert ws.recv().startswith("40")  # Socket.IO connect
            ws.send('421["echo","hi"]')
            assert ws.recv() == '431["hi"]'
        finally:
            ws.close()
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)


def test_without_gevent_websocket_refuses_other_worker_classes(tmp_path):
    proc, _, log = start(tmp_path, PYTHONPATH=without_gevent_websocket(tmp_path), GUNICORN_CMD_ARGS="-k gevent_pywsgi")
    assert proc.wait(timeout=30) != 0
    text = output(log)
    assert "refusing worker class 'gevent_pywsgi'" in text
    assert "gevent-websocket not installed (simple-websocket), WebSockets only work under gevent" in text


@pytest.mark.parametrize("access_log", ["-", ""])
def test_access_log_is_gunicorns_and_follows_access_log(tmp_path, access_log):
    """gevent-websocket's handler logged every request itself, whatever ACCESS_LOG said
    (deployment/operations/access_log.py): now ACCESS_LOG=- logs in ACCESS_LOG_FORMAT, and the default logs nothing."""
    proc, port, log = start(tmp_path, ACCESS_LOG=access_log)
    try:
        wait_healthy(port)
        base = f"http://127.0.0.1:{port}"
        requests.get(f"{base}/healthz", headers={"X-Forwarded-For": "203.0.113.9"}, timeout=5)
        requests.get(f"{base}/socket.io/?EIO=4&transport=polling", timeout=5)
        time.sleep(0.5)
        text = output(log)
        assert ('203.0.113.9 "GET /healthz HTTP/1.1" 200' in text) == (access_log == "-")
        assert ('"GET /socket.io/?EIO=4&transport=polling HTTP/1.1" 200' in text) == (access_log == "-")
        assert "geventwebsocket.handler" not in text
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
