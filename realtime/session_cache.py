"""Flask-SocketIO opens the signed-cookie session for every Socket.IO event (it pushes a request
context each time), and Flask builds a new itsdangerous serializer for each opening: cache it."""

from flask.sessions import SecureCookieSessionInterface


class CachedSerializerSessionInterface(SecureCookieSessionInterface):
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
