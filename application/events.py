"""The demo Socket.IO events. They are also the contract that the tests and the benchmark use."""

from flask import current_app, request, session
from flask_socketio import ConnectionRefusedError, emit, join_room, leave_room

from application.auth import signed_in_user

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


def register(socketio):
    @socketio.on("connect")
    def connect(auth=None):
        # May block (the user lookup does I/O): under gevent only this client waits.
        user = signed_in_user()
        if user is None and current_app.config["SETTINGS"].require_login:
            raise ConnectionRefusedError("sign in first: POST /login with {'name': ...}, then connect again")
        session["user"] = user or f"guest-{request.sid[:6]}"  # the handlers' copy of the Flask session

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
            "user": session.get("user"),
            "instance": current_app.config["SETTINGS"].instance_name,
        }
        emit("message", payload, to=room)
        return {"ok": True}
