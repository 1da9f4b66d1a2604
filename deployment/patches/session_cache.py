"""Flask-SocketIO pushes a request context for every Socket.IO event, and Flask opens the signed-cookie
session on each push. Two savings on that hot path, neither visible to handlers:

- Flask builds a new itsdangerous serializer for each opening: cache it.
- With manage_session (Flask-SocketIO's default) only the connection's first event (connect) reads the
  cookie session: Flask-SocketIO copies it into environ["saved_session"] and, for every later event, puts
  that copy in place of whatever was opened. Opening the cookie again (parsing the Cookie header, checking
  the signature) is wasted work then, so an empty session stands in until it is replaced. HTTP requests
  never carry "saved_session" (it lives in the Socket.IO connection's own environ)."""

from flask.sessions import SecureCookieSessionInterface

MANAGED_SESSION = "saved_session"  # flask_socketio.SocketIO._handle_event (Flask-SocketIO 5.x)


class CachedSerializerSessionInterface(SecureCookieSessionInterface):
    def open_session(self, app, request):
        if MANAGED_SESSION in request.environ:  # a Socket.IO event after connect: replaced at once
            return self.session_class()
        return super().open_session(app, request)

    def get_signing_serializer(self, app):
        key = (app.secret_key, tuple(app.config.get("SECRET_KEY_FALLBACKS") or ()))
        cached = app.extensions.get("session_serializer")
        if cached is None or cached[0] != key:
            serializer = super().get_signing_serializer(app)
            if serializer is None:  # no secret key: Flask's own error path
                return None
            cached = (key, serializer)
            app.extensions["session_serializer"] = cached
        return cached[1]


VERIFIED = {"flask": ("3.1.3",), "flask-socketio": ("5.7.0",)}  # Flask-SocketIO: the saved_session key
REPLACES = ["app.session_interface"]
ROWS = [("echo_ws", "app_cpu_ms_per_1000")]  # the benchmark rows it serves (deployment/patches/README.md)
PROVEN_BY = "tests/deployment/test_app.py"  # same answers as the library's own code


def install(socketio, app, settings):
    app.session_interface = CachedSerializerSessionInterface()
