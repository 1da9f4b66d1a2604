"""gunicorn.conf.py's guards, checked by starting real gunicorn processes."""

import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from native_stack import free_port

ROOT = Path(__file__).resolve().parent.parent
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
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).ok:
                    break
            except requests.RequestException:
                time.sleep(0.2)
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
