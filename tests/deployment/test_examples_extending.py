"""The tests of docs/extending.md: a Flask route (blueprint), a Socket.IO namespace and a background task,
with Flask-SocketIO's test client (no HTTP server, no Redis: fast, and they run anywhere).

In your own project you register the pieces in app.py (see the guide), so the `app` fixture of
tests/deployment/conftest.py already has them: drop the `app` fixture below and keep the tests."""

import re
import time
from pathlib import Path

import pytest

from examples import announcements
from examples.notes import NotesNamespace
from examples.ticker import start_ticker


@pytest.fixture
def app(app):
    """The template's app plus the guide's examples (your app.py does this part)."""
    from stack_app import socketio

    app.register_blueprint(announcements.bp)
    socketio.on_namespace(NotesNamespace("/notes"))
    return app


def received(client, name, namespace="/"):
    events = [e for e in client.get_received(namespace) if e["name"] == name]
    return [e["args"][0] if isinstance(e["args"], list) else e["args"] for e in events]


# --- a Flask route -------------------------------------------------------------------------------------


def test_instance_route(app):
    assert app.test_client().get("/api/instance").get_json() == {"instance": "unit"}


def test_announce_route_reaches_socketio_clients(app, sio_test_client):
    listener = sio_test_client()
    response = app.test_client().post("/api/announce", json={"text": " maintenance at 18:00 "})
    assert response.status_code == 202
    assert received(listener, "announcement") == [{"text": "maintenance at 18:00"}]


def test_announce_route_rejects_bad_input(app):
    response = app.test_client().post("/api/announce", json={"text": ""})
    assert response.status_code == 400 and "error" in response.get_json()


# --- a Socket.IO namespace -----------------------------------------------------------------------------


def test_notes_namespace_broadcasts_to_its_clients(app):
    from stack_app import socketio

    writer = socketio.test_client(app, namespace="/notes")
    reader = socketio.test_client(app, namespace="/notes")
    outsider = socketio.test_client(app)  # the default namespace hears nothing of /notes
    assert writer.emit("add", {"text": " buy milk "}, namespace="/notes", callback=True) == {"ok": True}
    assert [note["text"] for note in received(reader, "note", "/notes")] == ["buy milk"]
    assert received(outsider, "note") == []
    assert "error" in writer.emit("add", {"text": 42}, namespace="/notes", callback=True)


def test_notes_namespace_refuses_a_revoked_token(app):
    from stack_app import socketio

    client = socketio.test_client(app, namespace="/notes", auth={"token": "revoked"})
    assert not client.is_connected("/notes")


# --- a background task ---------------------------------------------------------------------------------


def test_ticker_emits_until_stopped(app):
    from stack_app import socketio

    client = socketio.test_client(app)
    stop = start_ticker(socketio, "unit", interval=0.01)
    ticks = []
    deadline = time.monotonic() + 5
    while len(ticks) < 3 and time.monotonic() < deadline:
        socketio.sleep(0.02)  # lets the task run (under gevent it is a greenlet of this process)
        ticks += received(client, "tick")
    assert [tick["count"] for tick in ticks[:3]] == [1, 2, 3]
    assert ticks[0]["instance"] == "unit"
    stop.set()
    socketio.sleep(0.05)
    client.get_received()
    socketio.sleep(0.05)
    assert received(client, "tick") == []  # stopped


# --- the guide stays true ------------------------------------------------------------------------------


def test_the_guide_shows_these_files_and_tests():
    root = Path(__file__).resolve().parents[2]
    guide = (root / "docs" / "extending.md").read_text()
    files = re.findall(r"<!-- file: (\S+) -->\n```python\n(.*?)```", guide, re.S)
    assert {path for path, _code in files} == {"examples/announcements.py", "examples/notes.py", "examples/ticker.py"}
    for path, code in files:
        assert code == (root / path).read_text(), f"docs/extending.md's copy of {path} is out of date"
    tests = Path(__file__).read_text()
    shown = [block for block in re.findall(r"```python\n(def test_.*?)```", guide, re.S)]
    assert len(shown) == 3
    for block in shown:
        assert block in tests, f"docs/extending.md shows a test that is not in this file: {block[:60]}"
