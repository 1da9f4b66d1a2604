"""The development stack (docker-compose.dev.yml) on a real engine: a handler changed in the source is what
clients get through HAProxy seconds later, with no rebuild and no container restarted, still sticky on the io
cookie and still carried between the instances by Redis.

One copy of the repo, two replicas. Control first: the same edit under plain docker-compose.yml changes
nothing (the image holds the code); then the dev override, then an edit that must show up live."""

from __future__ import annotations

import re
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import socketio
from docker_stack import ComposeStack, copy_of_the_repo, nofile_limit

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "rtdev"
REPLICAS = 2


def edit_greeting(tree, word):
    """application/events.py's greet answers "<word>, <name>!" from now on (as an editor would save it)."""
    path = tree / "application" / "events.py"
    text, count = re.subn(r'greeting = f"\w+, ', f'greeting = f"{word}, ', path.read_text())
    assert count == 1
    path.write_text(text)


def answers(stack, clients=6):
    """{instance: {greet answers}} from `clients` clients connected at once (HAProxy's leastconn spreads them)."""
    seen, connected = {}, []
    try:
        for _ in range(clients):
            client = socketio.Client(reconnection=False)
            client.connect(stack.url, transports=["websocket"], wait_timeout=10)
            connected.append(client)
        for client in connected:
            instance = client.call("whoami", timeout=10)
            seen.setdefault(instance, set()).add(client.call("greet", {"name": "Ann"}, timeout=10))
    finally:
        for client in connected:
            client.disconnect()
    return seen


def wait_for_answers(stack, expected, timeout):
    """Polls until every instance answers `expected` (a reload drops connections: a failed try is retried)."""
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            last = answers(stack)
        except (socketio.exceptions.ConnectionError, socketio.exceptions.TimeoutError) as error:
            last = repr(error)
        else:
            if len(last) == REPLICAS and all(got == {expected} for got in last.values()):
                return last
        time.sleep(1)
    raise AssertionError(f"not every instance answers {expected!r} within {timeout}s: {last}")


@pytest.fixture(scope="module")
def tree(docker_images, tmp_path_factory):
    tree = tmp_path_factory.mktemp("dev") / "repo"
    copy_of_the_repo(tree)
    env = {**docker_images, "NOFILE_LIMIT": nofile_limit(docker_images), "APP_REPLICAS": str(REPLICAS)}
    yield SimpleNamespace(path=tree, env=env)
    ComposeStack(PROJECT, env, directory=tree).down("-v")


def test_control_without_the_dev_override_an_edit_changes_nothing(tree):
    plain = ComposeStack(PROJECT, tree.env, directory=tree.path)
    plain.down("-v")
    plain.up("--build")
    wait_for_answers(plain, "Hello, Ann!", timeout=30)
    edit_greeting(tree.path, "Hi")
    time.sleep(8)  # eight times the dev reloader's poll interval
    assert all(got == {"Hello, Ann!"} for got in answers(plain).values())


def test_with_the_dev_override_an_edited_handler_is_live_behind_haproxy(tree):
    dev = ComposeStack(PROJECT, tree.env, files=["docker-compose.dev.yml"], directory=tree.path)
    dev.up()  # recreates the app containers with the source mounted: the earlier edit shows at once
    wait_for_answers(dev, "Hi, Ann!", timeout=60)
    containers = dev.containers("app")
    assert len(containers) == REPLICAS

    edit_greeting(tree.path, "Welcome")
    wait_for_answers(dev, "Welcome, Ann!", timeout=60)
    assert dev.containers("app") == containers, "no container was restarted or replaced"
    assert "Worker reloading" in dev.logs("app")

    # still sticky: a long-polling client stays on one instance across requests
    polling = socketio.Client(reconnection=False)
    polling.connect(dev.url, transports=["polling"], wait_timeout=10)
    try:
        assert len({polling.call("whoami", timeout=10) for _ in range(5)}) == 1
    finally:
        polling.disconnect()

    # still one app across instances: a greet on one instance reaches a client on the other through Redis
    clients, by_instance = [], {}
    try:
        while len(by_instance) < REPLICAS and len(clients) < 10:
            client = socketio.Client(reconnection=False)
            got = []
            client.on("greeted", got.append)
            client.connect(dev.url, transports=["websocket"], wait_timeout=10)
            client.got = got
            clients.append(client)
            by_instance.setdefault(client.call("whoami", timeout=10), client)
        assert len(by_instance) == REPLICAS, "leastconn put every client on one instance"
        sender, receiver = by_instance.values()
        sender.call("greet", {"name": "Bo"}, timeout=10)
        deadline = time.monotonic() + 10
        while not receiver.got and time.monotonic() < deadline:
            time.sleep(0.1)
        assert receiver.got and receiver.got[0]["greeting"] == "Welcome, Bo!"
    finally:
        for client in clients:
            client.disconnect()
