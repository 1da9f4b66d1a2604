# examples/announcements.py: a Flask blueprint; its POST route pushes a Socket.IO event to every client.

from flask import Blueprint, current_app, jsonify, request

bp = Blueprint("announcements", __name__, url_prefix="/api")


@bp.get("/instance")
def instance():
    return jsonify(instance=current_app.config["SETTINGS"].instance_name)


@bp.post("/announce")
def announce():
    from app import socketio  # the one SocketIO object of app.py

    data = request.get_json(silent=True) or {}
    text = data.get("text")
    if not isinstance(text, str) or not text.strip():
        return jsonify(error="announce needs {'text': '<non-empty string>'}"), 400
    # no room: every client of the default namespace, on every instance (through Redis)
    socketio.emit("announcement", {"text": text.strip()[:500]}, namespace="/")
    return jsonify(ok=True), 202
