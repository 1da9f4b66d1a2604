"""Your Flask routes, in a blueprint that create_app() registers."""

from flask import Blueprint, current_app, jsonify, request

from application.extensions import socketio

bp = Blueprint("routes", __name__, url_prefix="/api")


@bp.post("/announce")
def announce():
    """{"text": "<text>"} -> `announcement` to every client of the default namespace, on every instance."""
    data = request.get_json(silent=True)  # None when the body is not JSON
    text = data.get("text") if isinstance(data, dict) else None
    if not isinstance(text, str) or not text.strip():
        return jsonify(error="announce needs {'text': '<non-empty string>'}"), 400
    limit = current_app.config["ANNOUNCEMENT_MAX_LENGTH"]
    # no room: every client of the default namespace, on every instance (through Redis)
    socketio.emit("announcement", {"text": text.strip()[:limit]}, namespace="/")
    return jsonify(ok=True), 202
