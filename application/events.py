"""Your Socket.IO events. What a handler returns is the client's ack; `emit()` sends events.

Blocking calls (HTTP requests, database drivers) are fine here: gevent patches the standard library in
wsgi.py, so a slow call only pauses its own client."""

from flask import request
from flask_socketio import emit

from application.extensions import socketio


@socketio.on("greet")
def greet(data=None):
    """{"name": "<text>"} -> ack "Hello, <name>!"; every other client gets `greeted` (on every instance)."""
    name = data.get("name") if isinstance(data, dict) else None
    if not isinstance(name, str) or not name.strip():
        return {"error": "greet needs {'name': '<non-empty string>'}"}
    greeting = f"Hello, {name.strip()[:40]}!"
    emit("greeted", {"greeting": greeting, "sid": request.sid}, broadcast=True, include_self=False)
    return greeting
