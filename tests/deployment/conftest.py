"""Fixtures that build what each test needs: an app for unit tests, and real native stacks
(Redis + gunicorn instances + HAProxy on free loopback ports) for end-to-end tests."""

import os
import sys
import threading
import time
from pathlib import Path

import pytest
import socketio

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts"), str(ROOT / "tests" / "deployment")]

from native_stack import Stack, free_port  # noqa: E402
from scenarios_faults import stack_env  # noqa: E402

from deployment.settings import Settings  # noqa: E402

RUNNING_STACKS = []  # every stack started by a fixture: their logs are shown when a test fails


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failing test's report ends with the last lines each running stack's processes logged during it."""
    report = (yield).get_result()
    if report.when != "call" or not report.failed:
        return
    started = time.time() - call.duration - 1
    for stack in RUNNING_STACKS:
        for log in sorted(stack.logs.glob("*.log")):
            if log.stat().st_mtime >= started:
                tail = log.read_text(errors="replace").splitlines()[-40:]
                report.sections.append((f"{log} (last {len(tail)} lines)", "\n".join(tail)))


def started(stack):
    RUNNING_STACKS.append(stack)  # before up(): a stack that fails to start shows its logs too
    stack.up()
    return stack


def stopped(stack):
    stack.down()
    if stack in RUNNING_STACKS:
        RUNNING_STACKS.remove(stack)


@pytest.fixture(scope="session")
def make_stack(tmp_path_factory):
    """Factory: make_stack(replicas=3, message_queue=True, **env) starts a stack, stopped at session end."""
    made = []

    def make(replicas=3, message_queue=True, **env):
        stack = Stack(
            state_dir=tmp_path_factory.mktemp("stack"),
            port=free_port(),
            replicas=replicas,
            env=stack_env(**env),
            message_queue=message_queue,
        )
        made.append(started(stack))
        return stack

    yield make
    for stack in made:
        stopped(stack)


@pytest.fixture(scope="session")
def stack(make_stack):
    """The template as shipped: 3 instances, Redis, HAProxy. Shared: tests must not break it."""
    return make_stack()


@pytest.fixture
def own_stack(tmp_path):
    """A stack for one test that may kill or reconfigure parts of it; stopped right after the test."""
    stacks = []

    def make(replicas=3, message_queue=True, **env):
        stack = Stack(
            state_dir=tmp_path / f"stack{len(stacks)}",
            port=free_port(),
            replicas=replicas,
            env=stack_env(**env),
            message_queue=message_queue,
        )
        stacks.append(stack)
        return started(stack)

    yield make
    for stack in stacks:
        stopped(stack)


class Recorder:
    """A python-socketio client that records every event it receives."""

    def __init__(self, url, transports=None, **client_options):
        self.url = url
        self.transports = transports
        self.client = socketio.Client(reconnection_delay=0.5, reconnection_delay_max=1, **client_options)
        self.received = []
        self.disconnects = 0
        self.lock = threading.Lock()
        self.client.on("*", self._record)
        self.client.on("disconnect", self._disconnected)

    def _record(self, event, *args):
        with self.lock:
            self.received.append((event, args[0] if args else None))

    def _disconnected(self, *_reason):
        self.disconnects += 1

    def connect(self, **kwargs):
        self.client.connect(self.url, transports=self.transports, wait_timeout=10, **kwargs)
        return self

    def call(self, event, data=None, timeout=10):
        return self.client.call(event, data, timeout=timeout)

    def events(self, name):
        with self.lock:
            return [data for event, data in self.received if event == name]

    def wait_for(self, name, predicate=lambda data: True, timeout=10):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(predicate(data) for data in self.events(name)):
                return True
            time.sleep(0.05)
        return False

    def close(self):
        self.client.disconnect()


@pytest.fixture
def clients():
    """Factory for Recorder clients; all are disconnected after the test."""
    made = []

    def make(url, transports=None, connect=True, **options):
        recorder = Recorder(url, transports=transports, **options)
        made.append(recorder)
        return recorder.connect() if connect else recorder

    yield make
    for recorder in made:
        try:
            recorder.close()
        except Exception:
            pass


@pytest.fixture
def app():
    """The deployment layer on a bare Flask app (none of application/ or demo/: the stack's tests never depend on
    the user's code), in development mode without a message queue, for Flask-SocketIO's test client."""
    from stack_app import create_app

    return create_app(Settings.from_env({"APP_ENV": "development", "INSTANCE_NAME": "unit"}))


@pytest.fixture
def sio_test_client(app):
    from stack_app import socketio

    return lambda **kwargs: socketio.test_client(app, **kwargs)


# --- Docker: a real engine and local stand-in images (tests/deployment/test_docker_*.py) --------------------------
@pytest.fixture(scope="session")
def docker_engine():
    """A Docker engine that answers: the one running, or a dockerd started here (as root) and stopped after.
    Missing Docker skips the Docker tests on a developer's machine and fails them in CI (CI=true)."""
    from docker_stack import DockerEngine, DockerError

    try:
        engine = DockerEngine.ensure()
    except DockerError as error:
        if os.environ.get("CI"):
            pytest.fail(str(error))
        pytest.skip(str(error))
    yield engine
    engine.stop()


@pytest.fixture(scope="session")
def docker_images(docker_engine):
    """Image variables for compose: local stand-ins built from Debian's packages (no registry needed), unless
    DOCKER_TEST_IMAGES=official (a host that can pull the official images)."""
    from docker_stack import standin_env

    if os.environ.get("DOCKER_TEST_IMAGES") == "official":
        return {}
    return standin_env()
