"""The tests of docs/extending.md's examples (examples/), with Flask's and Flask-SocketIO's test clients.

Once you have copied an example into application/ and registered it in app.py as the guide says, your `app`
fixture (conftest.py) has it: copy its tests without the `app` fixture below."""

import time

import pytest

from application.extensions import socketio
from examples import announcements, cookies, notes, ticker  # noqa: F401  (notes, cookies register on import)


@pytest.fixture
def app(app):
    """app.py's app plus the guide's examples (your app.py does this part)."""
    app.register_blueprint(announcements.bp)
    return app


def received(socketio_client, name, namespace="/"):
    """The data of every `name` event the client got since the last call."""
    events = [e for e in socketio_client.get_received(namespace) if e["name"] == name]
    return [e["args"][0] if isinstance(e["args"], list) else e["args"] for e in events]


# --- a Flask route -------------------------------------------------------------------------------------


def test_instance_route(client):
    assert client.get("/api/instance").get_json() == {"instance": "unit"}


def test_announcements_reach_every_socketio_client(client, socketio_client):
    assert client.post("/login", json={"name": "ann"}).status_code == 200
    response = client.post("/api/announcements", json={"text": " maintenance at 18:00 "})
    assert response.status_code == 202
    assert received(socketio_client, "announcement") == [{"text": "maintenance at 18:00", "by": "ann"}]


def test_announcements_need_sign_in_and_text(client, socketio_client):
    assert client.post("/api/announcements", json={"text": "hi"}).status_code == 401
    client.post("/login", json={"name": "ann"})
    for body in ({"text": ""}, {"text": 42}, ["hi"]):
        assert client.post("/api/announcements", json=body).status_code == 400
    client.post("/logout")
    assert client.post("/api/announcements", json={"text": "hi"}).status_code == 401
    assert received(socketio_client, "announcement") == []


# --- a Socket.IO namespace -----------------------------------------------------------------------------


def test_notes_namespace_broadcasts_to_its_clients(new_socketio_client):
    writer = new_socketio_client(namespace="/notes")
    reader = new_socketio_client(namespace="/notes")
    outsider = new_socketio_client()  # the default namespace hears nothing of /notes
    assert writer.emit("add", {"text": " buy milk "}, namespace="/notes", callback=True) == {"ok": True}
    assert [note["text"] for note in received(reader, "note", "/notes")] == ["buy milk"]
    assert received(outsider, "note") == []
    assert "error" in writer.emit("add", {"text": 42}, namespace="/notes", callback=True)


def test_notes_namespace_refuses_a_revoked_token(new_socketio_client):
    client = new_socketio_client(namespace="/notes", auth={"token": "revoked"})
    assert not client.is_connected("/notes")


# --- a background task ---------------------------------------------------------------------------------


def test_ticker_ticks_to_the_clients_of_its_namespace(new_socketio_client, monkeypatch):
    monkeypatch.setattr(ticker, "TICK_SECONDS", 0.01)
    client = new_socketio_client(namespace="/ticker")  # the first client starts the task
    ticks = []
    deadline = time.monotonic() + 5
    while len(ticks) < 3 and time.monotonic() < deadline:
        socketio.sleep(0.02)  # lets the task run (a greenlet of this process)
        ticks += received(client, "tick", "/ticker")
    counts = [tick["count"] for tick in ticks[:3]]
    assert counts == list(range(counts[0], counts[0] + 3)), ticks  # one task: no count twice, none missed
    assert ticks[0]["instance"] == "unit"


# --- cookies -------------------------------------------------------------------------------------------


def test_cookies_on_engineio_responses(client):
    handshake = client.get("/socket.io/?EIO=4&transport=polling")
    assert handshake.status_code == 200
    assert {"io", "visit", "visitor"} <= {cookie.split("=")[0] for cookie in handshake.headers.getlist("Set-Cookie")}
    again = client.get("/socket.io/?EIO=4&transport=polling")  # the client keeps `visitor`: it is not set again
    assert {cookie.split("=")[0] for cookie in again.headers.getlist("Set-Cookie")} >= {"visit"}
    assert "visitor" not in {cookie.split("=")[0] for cookie in again.headers.getlist("Set-Cookie")}
