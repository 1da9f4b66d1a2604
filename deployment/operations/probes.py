"""The stack's probe events and cookies: what the stack's tests, scripts/loadtest and the benchmark drive.

They are not your app: your events go in application/. They belong to the deployment layer so that replacing
application/ leaves the stack's tests and the benchmark working. PROBES=false (default true) leaves them out.

Events of the default namespace (answered through the ack):
    echo       any data -> the same data
    whoami     -> this instance's name (INSTANCE_NAME)
    broadcast  any data -> `broadcast` with it to every client of every instance (through Redis); {"ok": true}
    join       {"room": "<name>"} -> {"ok": true, "room": ...}
    leave      {"room": "<name>"}
    say        {"room": "<name>", "message": "<text>"} -> `message` {room, message, sid, user, instance} to the room

Cookies (the Socket.IO cookie guide's two examples, deployment/operations/engineio_headers.py):
    uid        on the polling handshake only (SameSite=Strict)
    randomId   on any Engine.IO response to a client that lacks it (Max-Age one day)
"""

import secrets

from flask import current_app, request, session
from flask_socketio import emit, join_room, leave_room
from werkzeug.http import dump_cookie

MAX_ROOM_NAME = 64
MAX_MESSAGE = 2000


def bad_input(reason):
    """What an event's ack returns for input it cannot use; the connection stays open."""
    return {"error": reason}


def room_name(data):
    room = data.get("room") if isinstance(data, dict) else None
    if not isinstance(room, str) or not room.strip():
        return None
    return room.strip()[:MAX_ROOM_NAME]


def set_uid_cookie(headers, request):
    """The cookie guide's first example: a cookie set on the handshake only."""
    headers.append(("Set-Cookie", dump_cookie("uid", secrets.token_hex(8), path="/", samesite="Strict")))


def set_random_id_cookie(headers, request):
    """The guide's second example: a cookie set on any Engine.IO response to a client that lacks it."""
    if "randomId" not in request.cookies:
        headers.append(("Set-Cookie", dump_cookie("randomId", secrets.token_hex(8), path="/", max_age=86400)))


EVENTS = ("echo", "whoami", "broadcast", "join", "leave", "say")


registered = []  # the SocketIO objects that have the probe events (once each, however many apps they serve)


def register(socketio, engineio_headers):
    """Adds the probe events to `socketio` and the probe cookies to `engineio_headers` (before init_app), once
    each. A handler of yours with one of their names on the default namespace stops the start with one line."""
    if set_uid_cookie not in engineio_headers.handshake_hooks:
        engineio_headers.initial_headers(set_uid_cookie)
        engineio_headers.headers(set_random_id_cookie)
    if any(socketio is done for done in registered):
        return
    taken = sorted({message for message, _handler, namespace in socketio.handlers if namespace in (None, "/")})
    clash = [name for name in EVENTS if name in taken]
    if clash:
        raise RuntimeError(
            f"your Socket.IO handler(s) {clash} on the default namespace have the names of the stack's probe "
            "events (deployment/operations/probes.py): rename them, or set PROBES=false"
        )
    registered.append(socketio)

    @socketio.on("echo")
    def echo(data=None):
        return data

    @socketio.on("whoami")
    def whoami(_data=None):
        return current_app.config["SETTINGS"].instance_name

    @socketio.on("broadcast")
    def broadcast(data=None):
        # to=None with broadcast reaches every client of every instance through the message queue
        emit("broadcast", data, broadcast=True)
        return {"ok": True}

    @socketio.on("join")
    def join(data=None):
        room = room_name(data)
        if room is None:
            return bad_input("join needs {'room': '<non-empty string>'}")
        join_room(room)
        return {"ok": True, "room": room}

    @socketio.on("leave")
    def leave(data=None):
        room = room_name(data)
        if room is None:
            return bad_input("leave needs {'room': '<non-empty string>'}")
        leave_room(room)
        return {"ok": True, "room": room}

    @socketio.on("say")
    def say(data=None):
        room = room_name(data)
        message = data.get("message") if isinstance(data, dict) else None
        if room is None or not isinstance(message, str):
            return bad_input("say needs {'room': '<non-empty string>', 'message': '<string>'}")
        if len(message) > MAX_MESSAGE:
            return bad_input(f"message longer than {MAX_MESSAGE} characters")
        payload = {
            "room": room,
            "message": message,
            "sid": request.sid,
            "user": session.get("user") or f"guest-{request.sid[:6]}",
            "instance": current_app.config["SETTINGS"].instance_name,
        }
        emit("message", payload, to=room)
        return {"ok": True}
