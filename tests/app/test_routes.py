"""application/routes.py: Flask's test client for the HTTP side, a Socket.IO test client for what it emits."""

import pytest


def received(socketio_client, name, namespace="/"):
    """The data of every `name` event the client got since the last call."""
    events = [e for e in socketio_client.get_received(namespace) if e["name"] == name]
    return [e["args"][0] if isinstance(e["args"], list) else e["args"] for e in events]


def test_announce_reaches_every_socketio_client(client, socketio_client, new_socketio_client):
    other = new_socketio_client()
    response = client.post("/api/announce", json={"text": " maintenance at 18:00 "})
    assert response.status_code == 202 and response.get_json() == {"ok": True}
    for listener in (socketio_client, other):
        assert received(listener, "announcement") == [{"text": "maintenance at 18:00"}]


def test_announce_keeps_announcement_max_length_characters(app, client, socketio_client):
    app.config["ANNOUNCEMENT_MAX_LENGTH"] = 5  # the setting, as ANNOUNCEMENT_MAX_LENGTH=5 would set it
    assert client.post("/api/announce", json={"text": "maintenance at 18:00"}).status_code == 202
    assert received(socketio_client, "announcement") == [{"text": "maint"}]


BAD_BODIES = [{}, {"text": ""}, {"text": "  "}, {"text": 42}, {"text": ["hi"]}, [], ["hi"], "hi", 42, None]


@pytest.mark.parametrize("body", BAD_BODIES)
def test_announce_refuses_bad_json_and_emits_nothing(client, socketio_client, body):
    response = client.post("/api/announce", json=body)
    assert response.status_code == 400 and "error" in response.get_json()
    assert received(socketio_client, "announcement") == []


def test_announce_refuses_a_body_that_is_not_json(client, socketio_client):
    response = client.post("/api/announce", data="text=hi", content_type="application/x-www-form-urlencoded")
    assert response.status_code == 400
    assert received(socketio_client, "announcement") == []


def test_announce_is_post_only(client):
    assert client.get("/api/announce").status_code == 405
