# examples/notes.py: a Socket.IO namespace written as a class, a shared notes board on /notes.

from flask import request
from flask_socketio import ConnectionRefusedError, Namespace, emit

from application.extensions import socketio

MAX_NOTE = 280


class NotesNamespace(Namespace):
    def on_connect(self, auth=None):
        # refuse here, before any event: the client gets a connect_error with this message
        if isinstance(auth, dict) and auth.get("token") == "revoked":
            raise ConnectionRefusedError("token revoked")

    def on_add(self, data=None):
        text = data.get("text") if isinstance(data, dict) else None
        if not isinstance(text, str) or not text.strip():
            return {"error": "add needs {'text': '<non-empty string>'}"}
        note = {"text": text.strip()[:MAX_NOTE], "by": request.sid}
        emit("note", note, broadcast=True)  # every client of /notes, on every instance
        return {"ok": True}


socketio.on_namespace(NotesNamespace("/notes"))  # on import, like application/events.py's handlers
