"""application/events.py: what a handler returns is the client's ack; what it emits, the other clients get."""

import pytest


def received(socketio_client, name, namespace="/"):
    """The data of every `name` event the client got since the last call."""
    events = [e for e in socketio_client.get_received(namespace) if e["name"] == name]
    return [e["args"][0] if isinstance(e["args"], list) else e["args"] for e in events]


def test_greet_answers_through_the_ack(socketio_client):
    assert socketio_client.emit("greet", {"name": " Ann "}, callback=True) == "Hello, Ann!"


def test_greet_tells_the_other_clients(socketio_client, new_socketio_client):
    other = new_socketio_client()
    socketio_client.emit("greet", {"name": "Ann"}, callback=True)
    assert [data["greeting"] for data in received(other, "greeted")] == ["Hello, Ann!"]
    assert received(socketio_client, "greeted") == []  # not to the sender (include_self=False)


def test_greet_keeps_40_characters_of_a_name(socketio_client):
    assert socketio_client.emit("greet", {"name": "x" * 100}, callback=True) == f"Hello, {'x' * 40}!"


@pytest.mark.parametrize("data", [None, "Ann", [], {}, {"name": ""}, {"name": "   "}, {"name": 42}])
def test_greet_answers_bad_input_with_an_error_and_tells_no_one(socketio_client, new_socketio_client, data):
    other = new_socketio_client()
    answer = socketio_client.emit("greet", data, callback=True)
    assert "error" in answer
    assert received(other, "greeted") == []
    assert socketio_client.is_connected()  # bad input is answered, the connection stays
