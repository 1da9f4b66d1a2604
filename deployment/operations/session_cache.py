"""Flask-SocketIO pushes a request context for every Socket.IO event, and Flask opens the signed-cookie
session on each push. This speedup sets Flask's public extension point for that, `app.session_interface`, to
Flask's own signed-cookie interface with two savings on that hot path, neither visible to handlers:

- Flask builds a new itsdangerous serializer for each opening: it is kept while SECRET_KEY and
  SECRET_KEY_FALLBACKS, the two settings Flask builds it from (Flask 3.1), stay the same.
- With manage_session (Flask-SocketIO's default) only the connection's first event (connect) reads the
  cookie session: Flask-SocketIO copies it into environ["saved_session"] and, for every later event, puts
  that copy in place of whatever was opened. Opening the cookie again (parsing the Cookie header, checking
  the signature: about 35 µs of an echo event's 57 µs on Flask-SocketIO's test client) is wasted work then,
  so an empty session stands in until it is replaced. HTTP requests never carry "saved_session" (it lives in
  the Socket.IO connection's own environ). That key is Flask-SocketIO's internal detail: hence its pin.

An app that has its own session interface (server-side sessions, ...) keeps it: the speedup stays off.
"""

import logging

from flask.sessions import SecureCookieSessionInterface

log = logging.getLogger("patches")

MANAGED_SESSION = "saved_session"  # flask_socketio.SocketIO._handle_event (Flask-SocketIO 5.x)
CACHE = "session_serializer"  # app.extensions[CACHE]: ((secret key, fallbacks), serializer)


class CachedSerializerSessionInterface(SecureCookieSessionInterface):
    def open_session(self, app, request):
        if MANAGED_SESSION in request.environ:  # a Socket.IO event after connect: replaced at once
            return self.session_class()
        return super().open_session(app, request)

    def get_signing_serializer(self, app):
        key = (app.secret_key, tuple(app.config.get("SECRET_KEY_FALLBACKS") or ()))
        cached = app.extensions.get(CACHE)
        if cached is None or cached[0] != key:
            serializer = super().get_signing_serializer(app)
            if serializer is None:  # no secret key: Flask's own error path
                return None
            cached = (key, serializer)
            app.extensions[CACHE] = cached
        return cached[1]


DOOR = "app.session_interface"  # Flask's public extension point for sessions
SETS = ["app.session_interface"]  # what the door sets: where tools read it
# Flask: what the serializer is built from (the cache's key); Flask-SocketIO: the saved_session key
VERIFIED = {"flask": ("3.1.3",), "flask-socketio": ("5.7.0",)}
ROWS = [("echo_ws", "app_cpu_ms_per_1000")]  # the benchmark rows it serves (deployment/patches/README.md)
PROVEN_BY = "tests/deployment/test_session_cache.py"  # same answers as Flask's own interface


def install(socketio, app, settings):
    interface = app.session_interface
    if type(interface) not in (SecureCookieSessionInterface, CachedSerializerSessionInterface):
        log.warning(
            "speedup session_cache stays off: the app has its own session interface (%s.%s)",
            type(interface).__module__,
            type(interface).__qualname__,
        )
        return False
    app.session_interface = CachedSerializerSessionInterface()
    return True
