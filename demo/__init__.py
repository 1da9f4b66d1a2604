"""The demo: one removable unit. The page (`/`) and its chat, on its own Socket.IO namespace `/demo`.

To remove it: delete this folder (its page, assets, build step and tests are all in it) and the two lines of
app.py that name `demo`. Nothing else uses it.

The page shows, for every participant of a room, the instance that serves them and their transport
(long-polling or WebSocket), kept right across instances by demo/presence.py. It runs on its own
namespace so that its extra work (presence in Redis) stays off the default namespace's events, which the
tests and the benchmark use. The page also listens on the default namespace and shows whatever arrives
there (e.g. `flask --app app emit announcement '{"text": "hi"}'`).

Events of the `/demo` namespace (client -> server, all answered through the ack):
    connect    auth {"user": "<display name>"} (ignored when signed in; refused when REQUIRE_LOGIN=true and
               not signed in, or when the name is not 1-32 of letters, digits, '.', '-', '_')
    join       {"room": "<name>"} leaves the current room, joins this one; returns the room's presence
    say        {"message": "<text>"} to the current room
    transport  {} after an upgrade: the server reads the real transport and updates presence
Server -> client: welcome {sid, user, instance, transport}, presence {room, version, members},
message {room, user, instance, transport, message, sid}.
"""

from __future__ import annotations

import logging
from pathlib import Path

import redis
from flask import Blueprint, current_app, render_template, request, session
from flask_socketio import ConnectionRefusedError, emit, join_room, leave_room

from demo.presence import HEARTBEAT_EVERY, make_store
from deployment.operations.auth import USER_NAME, signed_in_user
from deployment.operations.recovery import recovered

log = logging.getLogger(__name__)

NAMESPACE = "/demo"
VENDOR_JS = Path("vendor") / "socket.io.min.js"  # inside demo/static; built by `npm run build` in demo/
BUILD_HINT = "run `npm ci && npm run build` in demo/ (scripts/stack up and scripts/test do it)"
MAX_ROOM_NAME = 64
MAX_MESSAGE = 2000

bp = Blueprint("demo", __name__, template_folder="templates", static_folder="static", static_url_path="/demo/static")
registered = []  # the SocketIO objects that have the /demo handlers (once each, however many apps)


def init_app(app, socketio):
    """The page's blueprint on `app`, the /demo namespace's handlers on `socketio` (before socketio.init_app)."""
    app.register_blueprint(bp)
    if not any(socketio is done for done in registered):
        register(socketio)
        registered.append(socketio)


def bad_input(reason):
    """What an event's ack returns for input it cannot use; the connection stays open."""
    return {"error": reason}


def room_name(data):
    room = data.get("room") if isinstance(data, dict) else None
    if not isinstance(room, str) or not room.strip():
        return None
    return room.strip()[:MAX_ROOM_NAME]


def vendor_js_path(app=None):
    return Path(bp.static_folder) / VENDOR_JS


@bp.record_once
def check_assets(state):
    path = vendor_js_path(state.app)
    if not path.is_file():
        log.error("demo page: %s is missing, so / shows an error page: %s", path, BUILD_HINT)


@bp.get("/")
def index():
    settings = current_app.config["SETTINGS"]
    if not vendor_js_path(current_app).is_file():
        log.error("demo page: %s is missing: %s", vendor_js_path(current_app), BUILD_HINT)
        return render_template("demo/missing_assets.html", path=f"demo/static/{VENDOR_JS}", hint=BUILD_HINT), 503
    return render_template(
        "demo/index.html",
        instance=settings.instance_name,
        require_login=settings.require_login,
        user=session.get("user"),
        max_message=MAX_MESSAGE,
    )


def presence_store(app):
    """This process's presence store, made on first use (so `flask emit` and other CLI runs never make one)."""
    store = app.extensions.get("presence")
    if store is None:
        store = app.extensions["presence"] = make_store(app.config["SETTINGS"])
    return store


def register(socketio):
    clients = {}  # sid -> {"user", "transport", "room"}: the /demo clients of this process
    heartbeat = {"started": False}

    def publish(snapshot):
        if snapshot is not None:
            socketio.emit("presence", snapshot, to=snapshot["room"], namespace=NAMESPACE)

    def presence_call(method, *args):
        """A presence change; a Redis outage degrades the demo (no presence) but keeps the chat working."""
        try:
            return getattr(presence_store(current_app), method)(*args)
        except redis.RedisError as exc:
            log.warning("presence %s failed: %s: %s", method, type(exc).__name__, exc)
            return None

    def heartbeat_loop(app):
        store = presence_store(app)
        while True:
            try:
                for snapshot in store.heartbeat():
                    publish(snapshot)
            except redis.RedisError as exc:
                log.warning("presence heartbeat failed: %s: %s", type(exc).__name__, exc)
            socketio.sleep(HEARTBEAT_EVERY)

    def start_heartbeat():
        if not heartbeat["started"] and current_app.config["SETTINGS"].redis_url:
            heartbeat["started"] = True
            socketio.start_background_task(heartbeat_loop, current_app._get_current_object())

    def transport_of(sid):
        try:
            return socketio.server.transport(sid, namespace=NAMESPACE)
        except (KeyError, TypeError):
            return "unknown"

    def user_for(auth):
        user = signed_in_user()
        if user is not None:
            return user
        if current_app.config["SETTINGS"].require_login:
            raise ConnectionRefusedError("sign in first")
        wanted = auth.get("user") if isinstance(auth, dict) else None
        if wanted in (None, ""):
            return f"guest-{request.sid[:4]}"
        if not isinstance(wanted, str) or not USER_NAME.match(wanted):
            raise ConnectionRefusedError("invalid user name: 1 to 32 letters, digits, '.', '-' or '_'")
        return wanted

    @socketio.on("connect", namespace=NAMESPACE)
    def connect(auth=None):
        user = user_for(auth)
        transport = transport_of(request.sid)
        clients[request.sid] = {"user": user, "transport": transport, "room": None}
        start_heartbeat()
        instance = current_app.config["SETTINGS"].instance_name
        welcome = {"sid": request.sid, "user": user, "instance": instance, "transport": transport}
        emit("welcome", {**welcome, "recovered": recovered()})  # CONNECTION_STATE_RECOVERY brought it back

    @socketio.on("join", namespace=NAMESPACE)
    def join(data=None):
        room = room_name(data)
        client = clients.get(request.sid)
        if room is None or client is None:
            return bad_input("join needs {'room': '<non-empty string>'}")
        if client["room"] and client["room"] != room:
            leave_room(client["room"])
            publish(presence_call("remove", client["room"], request.sid))
        client["room"] = room
        join_room(room)
        snapshot = presence_call("add", room, request.sid, client["user"], client["transport"])
        publish(snapshot)
        return {"ok": True, "room": room, "presence": snapshot}

    @socketio.on("say", namespace=NAMESPACE)
    def say(data=None):
        client = clients.get(request.sid)
        message = data.get("message") if isinstance(data, dict) else None
        if client is None or not client["room"]:
            return bad_input("join a room first")
        if not isinstance(message, str) or not message.strip():
            return bad_input("say needs {'message': '<non-empty string>'}")
        if len(message) > MAX_MESSAGE:
            return bad_input(f"message longer than {MAX_MESSAGE} characters")
        payload = {
            "room": client["room"],
            "user": client["user"],
            "instance": current_app.config["SETTINGS"].instance_name,
            "transport": client["transport"],
            "message": message,
            "sid": request.sid,
        }
        emit("message", payload, to=client["room"])
        return {"ok": True}

    @socketio.on("transport", namespace=NAMESPACE)
    def transport(_data=None):
        client = clients.get(request.sid)
        if client is None:
            return bad_input("not connected")
        current = transport_of(request.sid)
        if current != client["transport"]:
            client["transport"] = current
            if client["room"]:
                publish(presence_call("add", client["room"], request.sid, client["user"], current))
        return {"transport": current}

    @socketio.on("disconnect", namespace=NAMESPACE)
    def disconnect(reason=None):
        client = clients.pop(request.sid, None)
        if client and client["room"]:
            publish(presence_call("remove", client["room"], request.sid))
