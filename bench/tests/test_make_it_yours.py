"""README.md's "Make it yours", done on a fresh copy of the repo exactly as written there: its commands run as
they are, then a one-event, one-route app of a user's replaces application/ (with its tests), and the copy's fast
tests and the stack's end-to-end core (stack, cookies, failover through HAProxy) must pass. Nothing else is done
to the copy: a step the README does not list is a step the copy must not need.

This file is the project's proof (bench/), so the copy deletes it along with bench/."""

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

USER_EVENTS = '''\
"""My events."""

from application.extensions import socketio


@socketio.on("add")
def add(data=None):
    if not isinstance(data, list) or not all(isinstance(n, int) for n in data):
        return {"error": "add needs a list of integers"}
    return sum(data)
'''

USER_ROUTES = '''\
"""My routes."""

from flask import Blueprint, jsonify, request

from application.extensions import socketio

bp = Blueprint("routes", __name__, url_prefix="/api")


@bp.post("/notify")
def notify():
    text = (request.get_json(silent=True) or {}).get("text")
    if not isinstance(text, str) or not text:
        return jsonify(error="notify needs {'text': '<string>'}"), 400
    socketio.emit("notified", text, namespace="/")
    return jsonify(ok=True), 202
'''

USER_TESTS = '''\
"""My tests."""


def test_add(socketio_client):
    client = socketio_client
    assert client.emit("add", [1, 2, 3], callback=True) == 6
    assert client.emit("add", "x", callback=True) == {"error": "add needs a list of integers"}


def test_notify_reaches_clients(app, socketio_client):
    listener = socketio_client
    assert app.test_client().post("/api/notify", json={"text": "hi"}).status_code == 202
    assert [e["args"] for e in listener.get_received() if e["name"] == "notified"] == [["hi"]]
    assert app.test_client().post("/api/notify", json={}).status_code == 400
'''

FAST_TESTS = ["tests/app", "tests/deployment/test_app.py", "tests/deployment/test_architecture.py"]
END_TO_END_CORE = [
    "tests/deployment/test_stack_e2e.py",
    "tests/deployment/test_cookies.py",
    "tests/deployment/test_faults.py::test_killed_instance_under_load_recovers_and_nobody_else_notices",
]


def readme_steps():
    """The commands of README.md's "Make it yours" section (its first bash block), as written."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Make it yours", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "README.md's Make it yours section has no bash block of steps"
    return block.group(1)


def fresh_copy(dest):
    """The repo's files as a clone would have them (tracked, plus new files not ignored), with this machine's
    .venv and Node packages linked in (what scripts/test would install)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    (dest / ".venv").symlink_to(Path(sys.prefix))
    node_modules = ROOT / "tests" / "deployment" / "node" / "node_modules"
    if node_modules.is_dir():
        (dest / "tests" / "deployment" / "node" / "node_modules").symlink_to(node_modules)
    return dest


def run(argv, cwd, timeout=900, **env):
    return subprocess.run(
        argv,
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.stack  # the copy runs its end-to-end core through HAProxy, Redis and gunicorn
def test_readme_steps_make_a_copy_whose_tests_pass(tmp_path):
    copy = fresh_copy(tmp_path / "my-app")
    steps = run(["bash", "-euo", "pipefail", "-c", readme_steps()], copy)
    assert steps.returncode == 0, steps.stderr
    assert not (copy / "demo").exists() and not (copy / "bench").exists()
    assert "demo" not in (copy / "app.py").read_text()
    # "write your events, routes and their tests": a user's one-event, one-route app
    (copy / "application" / "events.py").write_text(USER_EVENTS)
    (copy / "application" / "routes.py").write_text(USER_ROUTES)
    for old in (copy / "tests" / "app").glob("test_*.py"):  # conftest.py's fixtures stay
        old.unlink()
    (copy / "tests" / "app" / "test_mine.py").write_text(USER_TESTS)

    result = run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *FAST_TESTS, *END_TO_END_CORE],
        copy,
        timeout=1200,
    )
    report = result.stdout[-6000:] + result.stderr[-3000:]
    print(textwrap.indent(report, "  copy| "))  # shown with -s, and in the failure report
    assert result.returncode == 0, report
    assert re.search(r"\d+ passed", result.stdout) and " failed" not in result.stdout


def test_control_a_step_left_out_breaks_the_copy(tmp_path):
    """The steps are needed as written: without the app.py line the copy cannot even import its app."""
    copy = fresh_copy(tmp_path / "half-done")
    shutil.rmtree(copy / "demo")
    result = run([sys.executable, "-c", "import app"], copy)
    assert result.returncode != 0 and "No module named 'demo'" in result.stderr


@pytest.mark.parametrize("needle", ["rm -rf demo bench", "sed -i '/demo/d' app.py"])
def test_the_steps_are_in_the_readme(needle):
    assert needle in readme_steps()
