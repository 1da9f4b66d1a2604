"""docs/extending.md stays true: its examples are examples/' files, its tests tests/app/test_examples.py's, and
each example works the same under `python app.py` (`make run`) as under gunicorn.

For the last part a test does what the guide tells a user in a copy of the repo (the repo's files as they are
now, whatever application/ holds): copies each example into application/, registers it in app.py as the guide
says (ADOPT below, which must be the guide's lines), then starts the copy one way or the other and drives it
with a real python-socketio client. It needs only app.py's create_app() and application/extensions.py.

Each check has a control that shows it can fail. The known bug: the old guide's route did `from app import
socketio` while app.py made the SocketIO object; under `python app.py` app.py runs as `__main__`, so that import
loaded a second copy of app.py with a second, unbound SocketIO and POST answered 500 (AttributeError: 'NoneType'
object has no attribute 'emit'), while gunicorn answered 202. The controls run the same checks on that old layout,
on cookie hooks put on a second copy of app.py's Deployment, on a ticker that sleeps with time.sleep and on a
namespace registered on a second SocketIO object.
"""

import ast
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
import socketio
from native_stack import free_port

# the full tier (tests/conftest.py): this module starts processes of the stack
pytestmark = pytest.mark.stack

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "extending.md"
EXAMPLES = ROOT / "examples"
INSTANCE = "examples"
MODES = ("python app.py", "gunicorn")

# What the guide says to add to app.py for each example, where: "imports" after the line that imports the
# SocketIO object (with the other imports), "create_app" in create_app() before deployment.init_app(...).
# test_the_guide_says_what_adopt_does checks the guide.
ADOPT = {
    "announcements": {
        "imports": ["from application import announcements"],
        "create_app": ["app.register_blueprint(announcements.bp)"],
    },
    "notes": {"imports": ["from application import notes  # noqa: F401  (registers /notes on import)"]},
    "ticker": {"imports": ["from application import ticker  # noqa: F401  (starts with the first /ticker client)"]},
    "cookies": {"imports": ["from application import cookies  # noqa: F401  (registers its hooks on import)"]},
}
ANCHORS = {
    "imports": (re.compile(r"from application\.extensions import .*\bsocketio\b"), "after"),
    "create_app": (re.compile(r"\s+deployment\.init_app\(app, socketio\b"), "before"),
}


def code(line):
    return line.split("  #")[0].strip()


def example_names():
    return sorted(path.stem for path in EXAMPLES.glob("*.py") if path.stem != "__init__")


if not EXAMPLES.is_dir():  # you deleted examples/: nothing here to test
    pytest.skip("examples/ is gone", allow_module_level=True)


# --- the guide shows these files, these tests and these registrations ----------------------------------------


def test_the_guide_shows_the_example_files():
    guide = GUIDE.read_text()
    files = re.findall(r"<!-- file: (\S+) -->\n```python\n(.*?)```", guide, re.S)
    assert sorted(path for path, _code in files) == [f"examples/{name}.py" for name in example_names()]
    for path, shown in files:
        assert shown == (ROOT / path).read_text(), f"docs/extending.md's copy of {path} is out of date"


def test_the_guide_shows_tests_of_tests_app():
    guide = GUIDE.read_text()
    tests = (ROOT / "tests" / "app" / "test_examples.py").read_text()
    shown = re.findall(r"```python\n(def test_.*?)```", guide, re.S)
    assert len(shown) >= len(ADOPT)
    for block in shown:
        assert block in tests, f"docs/extending.md shows a test that is not in tests/app/test_examples.py: {block[:60]}"


def test_the_guide_says_what_adopt_does():
    assert sorted(ADOPT) == example_names()
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), re.S)
    shown = {code(line) for block in blocks for line in block.splitlines()}
    for name, places in ADOPT.items():
        for line in (line for lines in places.values() for line in lines):
            assert code(line) in shown, f"docs/extending.md does not tell to add `{line}` for {name}"


def test_no_example_imports_app_py():
    """`python app.py` runs app.py as __main__: `import app` would load a second copy (the known bug)."""
    for path in [*EXAMPLES.glob("*.py"), ROOT / "application" / "extensions.py"]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not any(name == "app" or name.startswith("app.") for name in names), f"{path} imports app.py"


# --- a copy of the repo, adopted as the guide says ----------------------------------------------------------


def repo_files():
    """The repo's files (tracked, and new ones not ignored): what a user's clone holds, without .venv."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout
        return [ROOT / name for name in listed.decode().split("\0") if name]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout
        skip = {".git", ".venv", "node_modules", ".stack", "__pycache__", ".pytest_cache", ".ruff_cache"}
        return [path for path in ROOT.rglob("*") if not skip & set(path.relative_to(ROOT).parts)]


def copy_repo(dest):
    for path in repo_files():
        if path.is_file():  # a file deleted but not yet committed is listed too
            target = dest / path.relative_to(ROOT)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
    return dest


def add_to_app_py(repo, places):
    """Adds the lines of `places` ({"imports": [...], ...}) to the copy's app.py, as the guide says (but for the
    lines your app.py already has: you may have adopted the example already)."""
    app_py = repo / "app.py"
    lines = app_py.read_text().splitlines()
    for place, wanted in places.items():
        new_lines = [line for line in wanted if code(line) not in {code(old) for old in lines}]
        pattern, side = ANCHORS[place]
        found = [i for i, line in enumerate(lines) if pattern.match(line)]
        assert found, f"app.py has no line matching {pattern.pattern!r} (where the guide says to add {place})"
        at = found[0]
        indent = re.match(r"\s*", lines[at]).group()
        position = at + 1 if side == "after" else at
        lines[position:position] = [indent + line for line in new_lines]
    app_py.write_text("\n".join(lines) + "\n")


def adopt(repo, name, source=None):
    """The guide's steps for one example: copy it (or `source`, a control's variant) into application/, register
    it in app.py."""
    if source is None:
        source = (EXAMPLES / f"{name}.py").read_text()
    (repo / "application" / f"{name}.py").write_text(source)
    add_to_app_py(repo, ADOPT[name])


# --- the two ways to run it ---------------------------------------------------------------------------------


class Server:
    """The copy under `python app.py` (what `make run` runs) or under gunicorn with the repo's gunicorn.conf.py
    (one instance, no Redis), on a free port; stopped (its whole process group) on exit."""

    def __init__(self, repo, mode):
        self.repo, self.mode = repo, mode
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = repo.parent / f"{mode.replace(' ', '_')}.log"
        self.proc = None

    def command(self):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("STACK_", "GUNICORN_", "APP_"))}
        for key in ("REDIS_URL", "BIND", "WEB_CONCURRENCY", "SECRET_KEY", "SECRET_KEY_FILE", "PYTHONPATH"):
            env.pop(key, None)
        env.update(HOST="127.0.0.1", PORT=str(self.port), INSTANCE_NAME=INSTANCE, PYTHONUNBUFFERED="1")
        env.update(PING_INTERVAL="5", PING_TIMEOUT="5")  # a client gives up on a frozen server in 10 s, not 30
        if self.mode == "python app.py":
            env.update(APP_ENV="development")
            return [sys.executable, "app.py"], env
        env.update(APP_ENV="production", SECRET_KEY=secrets.token_hex(32))
        gunicorn = str(Path(sys.executable).with_name("gunicorn"))
        return [gunicorn, "--config", "gunicorn.conf.py"], env

    def output(self, lines=60):
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self):
        argv, env = self.command()
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                argv, cwd=self.repo, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.mode} exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if requests.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        self.__exit__()
        raise AssertionError(f"{self.mode} did not answer /healthz within 30 s:\n{self.output()}")

    def __exit__(self, *exc):
        if self.proc is None or self.proc.poll() is not None:
            return
        # gunicorn: its quick stop (no drain); python app.py: nothing to drain, and a KeyboardInterrupt can land in
        # a greenlet other than the server's
        os.killpg(self.proc.pid, signal.SIGINT if self.mode == "gunicorn" else signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


@pytest.fixture
def run():
    """run(repo, mode): a started Server, stopped after the test."""
    servers = []

    def start(repo, mode):
        servers.append(Server(repo, mode).__enter__())
        return servers[-1]

    yield start
    for server in servers:
        server.__exit__()


@pytest.fixture
def repo(tmp_path):
    return copy_repo(tmp_path / "repo")


class Client:
    """A python-socketio client of one namespace that records what it receives (and why it was refused)."""

    def __init__(self, url, namespace="/", auth=None):
        self.namespace = namespace
        self.sio = socketio.Client(reconnection=False, request_timeout=5)
        self.events, self.refusals, self.lock = [], [], threading.Lock()
        self.sio.on("*", self.record, namespace=namespace)
        self.sio.on("connect_error", self.refusals.append, namespace=namespace)
        try:
            self.sio.connect(url, namespaces=[namespace], auth=auth, wait_timeout=10)
            self.connected = True
        except socketio.exceptions.ConnectionError as exc:
            self.connected, self.error = False, exc

    def record(self, event, *args):
        with self.lock:
            self.events.append((event, args[0] if args else None))

    def received(self, name, count=1, timeout=5):
        """The data of the `name` events received, once there are `count` of them or after `timeout` s."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                found = [data for event, data in self.events if event == name]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.05)

    def call(self, event, data):
        return self.sio.call(event, data, namespace=self.namespace, timeout=5)

    def close(self):
        if self.sio.connected:
            self.sio.disconnect()


@pytest.fixture
def sio_clients():
    made = []

    def connect(url, namespace="/", auth=None):
        made.append(Client(url, namespace, auth))
        return made[-1]

    yield connect
    for client in made:
        client.close()


# --- what a user checks by hand, as functions -------------------------------------------------------------


def announcements_outcome(url, connect):
    """Sign in, POST /api/announcements: (status code, what a connected client received)."""
    listener = connect(url)
    assert listener.connected, listener.error
    http = requests.Session()
    assert http.post(f"{url}/login", json={"name": "ann"}, timeout=5).status_code == 200
    response = http.post(f"{url}/api/announcements", json={"text": " deploy at 18:00 "}, timeout=5)
    return response.status_code, listener.received("announcement")


def ticks(url, connect, count=2):
    client = connect(url, "/ticker")
    return client.received("tick", count=count, timeout=2 + 2 * count) if client.connected else []


def handshake_cookies(url, **cookies):
    raw = requests.get(f"{url}/socket.io/?EIO=4&transport=polling", cookies=cookies, timeout=5).raw
    return {value.split("=")[0] for value in raw.headers.getlist("Set-Cookie")}


# --- every example, both ways -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_every_example_works_as_the_guide_says(repo, run, sio_clients, mode):
    for name in ADOPT:
        adopt(repo, name)
    server = run(repo, mode)
    url = server.url

    # a Flask route (examples/announcements.py)
    assert requests.get(f"{url}/api/instance", timeout=5).json() == {"instance": INSTANCE}
    assert requests.post(f"{url}/api/announcements", json={"text": "hi"}, timeout=5).status_code == 401
    status, received = announcements_outcome(url, sio_clients)
    assert status == 202, server.output()
    assert received == [{"text": "deploy at 18:00", "by": "ann"}]

    # a Socket.IO namespace (examples/notes.py)
    writer, reader, outsider = sio_clients(url, "/notes"), sio_clients(url, "/notes"), sio_clients(url)
    assert writer.connected and reader.connected, server.output()
    assert writer.call("add", {"text": " buy milk "}) == {"ok": True}
    assert [note["text"] for note in reader.received("note")] == ["buy milk"]
    assert "error" in writer.call("add", {"text": 42})
    assert outsider.received("note", timeout=0.5) == []
    revoked = sio_clients(url, "/notes", auth={"token": "revoked"})
    assert not revoked.connected and revoked.refusals == [{"message": "token revoked"}]

    # a background task (examples/ticker.py): one task, whichever client came first
    first, second = ticks(url, sio_clients), ticks(url, sio_clients)
    assert [tick["instance"] for tick in first] == [INSTANCE, INSTANCE], server.output()
    assert first[1]["count"] == first[0]["count"] + 1
    assert second[1]["count"] == second[0]["count"] + 1 and second[0]["count"] > first[0]["count"]

    # cookies (examples/cookies.py)
    assert {"io", "visit", "visitor"} <= handshake_cookies(url), server.output()
    assert "visitor" not in handshake_cookies(url, visitor="known") and "visit" in handshake_cookies(url, visitor="x")


# --- controls: the same checks fail on the mistakes the guide warns against ---------------------------------

OLD_LAYOUT_APP_PY = '''"""app.py before application/extensions.py (d8b5351, reduced): it made the SocketIO object."""

import os

from flask import Flask
from flask_socketio import SocketIO

from deployment.extension import Deployment

socketio = SocketIO()


def create_app(deployment_settings=None):
    from application import announcements

    app = Flask(__name__)
    app.register_blueprint(announcements.bp)
    Deployment().init_app(app, socketio, deployment_settings)
    return app


if __name__ == "__main__":
    os.environ.setdefault("APP_ENV", "development")
    dev_app = create_app()
    socketio.run(dev_app, host=os.environ.get("HOST", "127.0.0.1"), port=int(os.environ.get("PORT", "5000")))
'''


def with_import_of_app_py(source, function, line):
    """The example with its `from application.extensions import ...` line gone and `line` as the first line of
    `function` (the old guide's `from app import socketio` inside the route)."""
    lines = [row for row in source.splitlines() if not row.startswith("from application.extensions import")]
    at = lines.index(f"def {function}():") + 1
    return "\n".join([*lines[:at], f"    {line}", *lines[at:]]) + "\n"


@pytest.mark.parametrize("mode", MODES)
def test_control_the_known_bug_the_old_route_under_the_old_app_py(repo, run, sio_clients, mode):
    """The old layout (SocketIO made in app.py) and the route importing it from app.py: 500 under python app.py."""
    (repo / "app.py").write_text(OLD_LAYOUT_APP_PY)
    source = with_import_of_app_py((EXAMPLES / "announcements.py").read_text(), "announce", "from app import socketio")
    (repo / "application" / "announcements.py").write_text(source)
    server = run(repo, mode)
    status, received = announcements_outcome(server.url, sio_clients)
    if mode == "python app.py":
        assert status == 500 and received == []
        assert "AttributeError: 'NoneType' object has no attribute 'emit'" in server.output(200)
    else:
        assert status == 202 and received == [{"text": "deploy at 18:00", "by": "ann"}]


@pytest.mark.parametrize("mode", MODES)
def test_control_cookie_hooks_on_a_deployment_of_their_own(repo, run, mode):
    """Cookie hooks put on a Deployment the module makes itself, not application.extensions' one that app.py
    binds: never called, in either mode (the example's hooks on the shared object are, above)."""
    source = (
        (EXAMPLES / "cookies.py")
        .read_text()
        .replace(
            "from application.extensions import deployment\n",
            "from deployment.extension import Deployment\n\ndeployment = Deployment()  # not the app's\n",
        )
    )
    assert "deployment = Deployment()" in source
    (repo / "application" / "cookies.py").write_text(source)
    add_to_app_py(repo, ADOPT["cookies"])
    server = run(repo, mode)
    found = handshake_cookies(server.url)
    assert "io" in found and not {"visit", "visitor"} & found


@pytest.mark.parametrize("mode", MODES)
def test_control_a_ticker_that_sleeps_with_time_sleep(repo, run, sio_clients, mode):
    """time.sleep in the task: fine where gevent patched it (gunicorn), a frozen process under python app.py."""
    source = (EXAMPLES / "ticker.py").read_text()
    assert "socketio.sleep(TICK_SECONDS)" in source
    adopt(repo, "ticker", "import time\n" + source.replace("socketio.sleep(TICK_SECONDS)", "time.sleep(TICK_SECONDS)"))
    server = run(repo, mode)
    if mode == "python app.py":
        assert ticks(server.url, sio_clients) == []
    else:
        assert len(ticks(server.url, sio_clients)) == 2


@pytest.mark.parametrize("mode", MODES)
def test_control_a_namespace_on_a_second_socketio_object(repo, run, sio_clients, mode):
    """A SocketIO object of the module's own (what `from app import socketio` gave the old route): no /notes."""
    source = (EXAMPLES / "notes.py").read_text()
    line = "from application.extensions import socketio"
    assert line in source
    adopt(repo, "notes", source.replace(line, "from flask_socketio import SocketIO\n\nsocketio = SocketIO()"))
    server = run(repo, mode)
    assert not sio_clients(server.url, "/notes").connected
    assert sio_clients(server.url).connected  # the app itself runs
