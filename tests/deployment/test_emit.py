"""Emitting from outside the app: `flask --app app emit`, `python -m deployment.operations.emit_cli` and the Python
snippet of docs/extending.md, against a running stack whose clients are connected through HAProxy."""

import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from deployment.operations.emit_cli import emit

ROOT = Path(__file__).resolve().parents[2]
FLASK = str(Path(sys.executable).with_name("flask"))


def run(argv, redis_url, **env):
    environ = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "REDIS_PASSWORD", "REDIS_PASSWORD_FILE")}
    environ.update(REDIS_URL=redis_url, APP_ENV="development", INSTANCE_NAME="emitter", **env)
    return subprocess.run(argv, cwd=ROOT, env=environ, capture_output=True, text=True, timeout=60)


# --- in process --------------------------------------------------------------------------------------------


def test_bad_json_is_exit_code_2_with_clear_message(app):
    result = app.test_cli_runner().invoke(emit, ["announcement", "{not json"])
    assert result.exit_code == 2
    assert "DATA" in result.output and "not JSON" in result.output


def test_bad_namespace_is_exit_code_2(app):
    result = app.test_cli_runner().invoke(emit, ["announcement", "1", "--namespace", "demo"])
    assert result.exit_code == 2 and "--namespace" in result.output


def test_without_redis_url_is_exit_code_1(app):
    result = app.test_cli_runner().invoke(emit, ["announcement", '{"a": 1}'])
    assert result.exit_code == 1 and "REDIS_URL is not set" in result.output


def test_unreachable_redis_is_exit_code_1():
    from native_stack import free_port

    result = run(
        [sys.executable, "-m", "deployment.operations.emit_cli", "x", "1"], f"redis://127.0.0.1:{free_port()}/0"
    )
    assert result.returncode == 1 and "cannot reach Redis" in result.stderr


# --- against the stack -------------------------------------------------------------------------------------


@pytest.fixture
def listeners(stack, clients):
    """Three clients through HAProxy, spread over the instances; the first two join a fresh room."""
    url = stack.status()["url"]
    group = [clients(url) for _ in range(3)]
    room = f"emit-{uuid.uuid4().hex[:6]}"
    for member in group[:2]:
        member.call("join", {"room": room})
    return group, room


def test_flask_emit_reaches_clients_of_every_instance(stack, listeners):
    group, _room = listeners
    token = uuid.uuid4().hex
    result = run(
        [FLASK, "--app", "app", "emit", "announcement", f'{{"token": "{token}"}}'], stack.status()["redis"]["url"]
    )
    assert result.returncode == 0, result.stderr
    assert re.search(
        r"emitted 'announcement' to every client of namespace / \(\d+ instance\(s\) subscribed\)", result.stdout
    )
    for client in group:
        assert client.wait_for("announcement", lambda data: data == {"token": token}), client.call("whoami")


def test_flask_emit_to_a_room_reaches_only_its_members(stack, listeners):
    group, room = listeners
    token = uuid.uuid4().hex
    argv = [FLASK, "--app", "app", "emit", "announcement", f'"{token}"', "--room", room]
    result = run(argv, stack.status()["redis"]["url"])
    assert result.returncode == 0, result.stderr
    for member in group[:2]:
        assert member.wait_for("announcement", lambda data: data == token)
    time.sleep(0.5)
    assert token not in group[2].events("announcement")


def test_module_form_without_the_app(stack, listeners):
    group, _room = listeners
    result = run(
        [sys.executable, "-m", "deployment.operations.emit_cli", "news", "[1, 2, 3]"], stack.status()["redis"]["url"]
    )
    assert result.returncode == 0, result.stderr
    assert group[0].wait_for("news", lambda data: data == [1, 2, 3])


def test_docs_python_snippet_emits_to_everyone_and_to_a_room(stack, clients, tmp_path):
    text = (ROOT / "docs" / "extending.md").read_text()
    snippet = re.search(r"<!-- emit-snippet -->\n```python\n(.*?)```", text, re.S).group(1)
    url = stack.status()["url"]
    ops, other = clients(url), clients(url)
    ops.call("join", {"room": "ops"})
    script = tmp_path / "emit_from_cron.py"
    script.write_text(snippet)
    result = run([sys.executable, str(script)], stack.status()["redis"]["url"])
    assert result.returncode == 0, result.stderr
    for client in (ops, other):
        assert client.wait_for("announcement", lambda data: data == {"text": "nightly report is ready"})
    assert ops.wait_for("announcement", lambda data: data == {"text": "ops: disk at 80%"})
    time.sleep(0.5)
    assert {"text": "ops: disk at 80%"} not in other.events("announcement")
