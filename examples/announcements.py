# examples/announcements.py: a blueprint of two routes; one reads the signed-in user and pushes a Socket.IO event.

from flask import Blueprint, current_app, jsonify, request

from application.extensions import socketio  # the app's one SocketIO object (never `from app import socketio`)
from deployment.operations.auth import signed_in_user

MAX_TEXT = 500

bp = Blueprint("announcements", __name__, url_prefix="/api")


@bp.get("/instance")
def instance():
    """The instance that answered (INSTANCE_NAME): the deployment's settings are in app.config["SETTINGS"]."""
    return jsonify(instance=current_app.config["SETTINGS"].instance_name)


@bp.post("/announcements")
def announce():
    """{"text": "<text>"} from a signed-in user -> `announcement` {text, by} to every client, on every instance."""
    user = signed_in_user()  # POST /login {"name": ...} signed in, and not signed out since
    if user is None:
        return jsonify(error="sign in first: POST /login with {'name': '<name>'}"), 401
    data = request.get_json(silent=True)  # None when the body is not JSON
    text = data.get("text") if isinstance(data, dict) else None
    if not isinstance(text, str) or not text.strip():
        return jsonify(error="announcements need {'text': '<non-empty string>'}"), 400
    # no room: every client of the default namespace, on every instance (through Redis)
    socketio.emit("announcement", {"text": text.strip()[:MAX_TEXT], "by": user}, namespace="/")
    return jsonify(ok=True), 202
