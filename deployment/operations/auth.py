"""Sign-in before a Socket.IO connection is accepted (the Node guide's `allowRequest`, done the Flask way).

An ordinary Flask route (/login) stores the user name in the signed Flask session cookie. With
REQUIRE_LOGIN=true, every Socket.IO connection, to any namespace and whatever your own `connect` handlers
do, first passes `login_gate`: it reads that session from the handshake, may do blocking I/O (here: look the
user up in Redis; under gevent this only pauses this client), and refuses unknown clients with a clear
`connect_error` message. REQUIRE_LOGIN=false (the default) keeps the app open to everyone.

The gate runs before each connection's connect handler through deployment/operations/instrument.py's
HandlerDoor, which wraps every handler as it is registered (python-socketio's public `Server.on()` and
`register_namespace()`) and gives namespaces without a connect handler one: public doors only, so it holds
whatever the python-socketio version.
"""

import re

import redis
from flask import Blueprint, current_app, jsonify, request, session
from flask_socketio import ConnectionRefusedError

from deployment.operations import instrument
from deployment.operations.message_queue import redis_client

bp = Blueprint("auth", __name__)

USER_NAME = re.compile(r"^[\w.-]{1,32}$")
LOGIN_TTL = 24 * 3600  # seconds a sign-in stays known to every instance


class UserDirectory:
    """Where signed-in users are recorded: Redis when the stack has one (every instance sees them),
    else this process's memory (single-process development)."""

    def __init__(self, redis_url):
        self.redis = redis_client(redis_url, socket_timeout=2) if redis_url else None
        self.local = set()

    def add(self, name):
        if self.redis is not None:
            self.redis.set(f"user:{name}", "1", ex=LOGIN_TTL)
        else:
            self.local.add(name)

    def remove(self, name):
        if self.redis is not None:
            self.redis.delete(f"user:{name}")
        else:
            self.local.discard(name)

    def known(self, name):
        if self.redis is not None:
            return bool(self.redis.exists(f"user:{name}"))
        return name in self.local


def directory():
    return current_app.extensions["user_directory"]


def init_app(app, settings):
    app.extensions["user_directory"] = UserDirectory(settings.redis_url)
    app.register_blueprint(bp)


@bp.post("/login")
def login():
    data = request.get_json(silent=True) or request.form
    name = (data.get("name") or "").strip()
    if not USER_NAME.match(name):
        return jsonify(error="name must be 1 to 32 letters, digits, '.', '-' or '_'"), 400
    try:
        directory().add(name)
    except redis.RedisError:
        return jsonify(error="sign-in is unavailable right now (user directory down)"), 503
    session["user"] = name
    return jsonify(user=name)


@bp.post("/logout")
def logout():
    name = session.pop("user", None)
    if name:
        try:
            directory().remove(name)
        except redis.RedisError:
            pass
    return jsonify(user=None)


@bp.get("/me")
def me():
    return jsonify(user=session.get("user"), require_login=current_app.config["SETTINGS"].require_login)


def signed_in_user():
    """The user of the connecting client, or None. Called from the Socket.IO connect handler, where
    Flask's `session` is the one sent with the handshake request."""
    name = session.get("user")
    if not name:
        return None
    try:
        return name if directory().known(name) else None
    except redis.RedisError:
        current_app.logger.warning("user directory unreachable: refusing sign-in check for %s", name)
        return None


REFUSAL = "sign in first: POST /login with {'name': ...}, then connect again"


def login_gate(app):
    """gate(namespace, sid, environ) for instrument.add_connect_gate: a `connect` (any namespace) without a
    signed-in user is refused before the namespace's own handler runs."""

    def gate(namespace, sid, environ):
        with app.request_context(environ or {}):  # the Flask session of the handshake request
            user = signed_in_user()
        if user is None:
            raise ConnectionRefusedError(REFUSAL)

    return gate


def install(socketio, app, settings):
    """After socketio.init_app(app): REQUIRE_LOGIN=true puts the login gate on every connection; True then."""
    if not settings.require_login:
        return False
    instrument.add_connect_gate(socketio.server, login_gate(app))
    return True
