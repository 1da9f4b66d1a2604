"""deployment/patches/event_context.py: Socket.IO events bind and match the URL once per connection, and handlers and
HTTP routes see exactly what plain Flask gives them."""

import pytest
from flask import Flask, request, url_for
from flask_socketio import SocketIO
from werkzeug.routing import Map

from deployment.patches.event_context import RealtimeFlask


def build(flask_class, **config):
    app = flask_class(__name__)
    app.config.update(SECRET_KEY="test", **config)

    @app.get("/items/<int:n>")
    def item(n):
        return {"n": n, "view_args": request.view_args, "rule": request.url_rule.rule}

    sio = SocketIO(app)

    @sio.on("probe")
    def probe(n):
        return {
            "url": url_for("item", n=n, _external=True),
            "rule": request.url_rule and request.url_rule.rule,
            "view_args": request.view_args,
            "routing_exception": type(request.routing_exception).__name__,
            "sid": request.sid,
            "event": request.event["message"],
        }

    return app, sio


def drive(flask_class, **config):
    app, sio = build(flask_class, **config)
    client = sio.test_client(app)
    answers = [client.emit("probe", n, callback=True) for n in (1, 2, 3)]
    http = [app.test_client().get(f"/items/{n}").get_json() for n in (4, 5)]
    assert len({answer.pop("sid") for answer in answers}) == 1  # one connection
    return answers, http


@pytest.mark.parametrize("config", [{}, {"TRUSTED_HOSTS": ["localhost"]}, {"SERVER_NAME": "example.test"}])
def test_handlers_and_routes_see_what_plain_flask_gives(config):
    assert drive(RealtimeFlask, **config) == drive(Flask, **config)


def test_handlers_build_urls_and_routes_get_their_view_args():
    answers, http = drive(RealtimeFlask)
    assert [a["url"] for a in answers] == [f"http://localhost/items/{n}" for n in (1, 2, 3)]
    assert answers[0]["routing_exception"] == "NotFound"  # /socket.io/ is no Flask route
    assert http == [{"n": n, "view_args": {"n": n}, "rule": "/items/<int:n>"} for n in (4, 5)]


def count_binds(monkeypatch, flask_class, events):
    binds = []
    original = Map.bind_to_environ

    def counting(self, environ, *args, **kwargs):
        binds.append(environ.get("PATH_INFO"))
        return original(self, environ, *args, **kwargs)

    monkeypatch.setattr(Map, "bind_to_environ", counting)
    app, sio = build(flask_class)
    client = sio.test_client(app)
    for n in range(events):
        client.emit("probe", n, callback=True)
    return len(binds)


def test_events_bind_the_url_once_per_connection(monkeypatch):
    assert count_binds(monkeypatch, Flask, 5) == 5  # the control: plain Flask binds on every event
    assert count_binds(monkeypatch, RealtimeFlask, 5) == 1  # on the first, kept in the environ since


def test_the_template_app_uses_it(app):
    from deployment.patches import event_context

    assert app.request_context.__func__ is event_context.request_context
    assert app.request_class is event_context.RealtimeRequest


def test_the_kept_route_holds_no_frames():
    """The route is kept for the connection's lifetime: a NotFound with its traceback (and NoMatch's, as its
    context) would keep the connect handler's frames alive, about 8 KB per connection."""
    from deployment.patches.event_context import ROUTE

    app, sio = build(RealtimeFlask)
    client = sio.test_client(app)
    client.emit("probe", 1, callback=True)
    kept = [environ[ROUTE] for environ in sio.server.environ.values() if ROUTE in environ]
    assert kept
    for _, _, _, error in kept:
        assert type(error).__name__ == "NotFound"
        assert error.__traceback__ is None and error.__context__ is None


def teardowns(flask_class, register):
    """What runs at the end of each Socket.IO event and HTTP request, with `register` hooking into the app."""
    app, sio = build(flask_class)
    seen = []
    register(app, seen)
    sio.test_client(app).emit("probe", 1, callback=True)
    app.test_client().get("/items/2")
    return seen


@pytest.mark.parametrize(
    "register",
    [
        lambda app, seen: app.teardown_request(lambda exc: seen.append("teardown_request")),
        lambda app, seen: app.teardown_appcontext(lambda exc: seen.append("teardown_appcontext")),
    ],
    ids=["teardown_request", "teardown_appcontext"],
)
def test_teardown_functions_still_run_after_every_event_and_request(register):
    seen = teardowns(RealtimeFlask, register)
    assert seen == teardowns(Flask, register) and len(seen) >= 2  # the event and the HTTP request


def test_teardown_signals_still_reach_their_receivers():
    from flask.signals import appcontext_tearing_down, request_tearing_down

    def register(app, seen):
        def on_request(sender, **kwargs):
            seen.append("request_tearing_down")

        def on_appcontext(sender, **kwargs):
            seen.append("appcontext_tearing_down")

        app.extensions["receivers"] = (on_request, on_appcontext)  # blinker holds receivers weakly
        request_tearing_down.connect(on_request, app)
        appcontext_tearing_down.connect(on_appcontext, app)

    seen = teardowns(RealtimeFlask, register)
    assert seen == teardowns(Flask, register)
    assert seen.count("request_tearing_down") >= 2 and seen.count("appcontext_tearing_down") >= 2


def test_a_requests_uploaded_files_are_still_closed():
    from io import BytesIO

    app = RealtimeFlask(__name__)
    uploads = []

    @app.post("/upload")
    def upload():
        uploads.append(request.files["f"])
        return "ok"

    assert app.test_client().post("/upload", data={"f": (BytesIO(b"data"), "f.txt")}).status_code == 200
    assert uploads[0].stream.closed


def session_app(socketio_class, manage_session):
    """Handlers that read and write the session, read request.*, fail, refuse, and take auth."""
    import flask
    import flask_socketio

    app = RealtimeFlask(__name__)
    app.config.update(SECRET_KEY="test")

    @app.post("/login")
    def login():
        flask.session["user"] = "ada"
        return "ok"

    sio = socketio_class(app, manage_session=manage_session)

    @sio.on("connect")
    def connect(auth):
        if auth == {"refuse": "socketio"}:
            raise flask_socketio.ConnectionRefusedError("no")  # python-socketio's: the connection is refused
        if auth == {"refuse": "builtin"}:
            raise ConnectionRefusedError("no")  # Python's own: Flask-SocketIO gives it to the error handler
        flask.session["auth"] = auth

    @sio.on("look")
    def look(data):
        flask.session["count"] = flask.session.get("count", 0) + 1
        return {
            "session": dict(flask.session),
            "sid_ok": flask.request.sid is not None,
            "namespace": flask.request.namespace,
            "event": flask.request.event,
        }

    @sio.on("fail")
    def fail(data):
        raise ValueError(data)

    @sio.on_error_default
    def on_error(error):
        return {"error": repr(error)}

    return app, sio


def session_story(socketio_class, manage_session):
    app, sio = session_app(socketio_class, manage_session)
    http = app.test_client()
    http.post("/login")
    client = sio.test_client(app, flask_test_client=http, auth={"token": 1})
    story = [client.emit("look", n, callback=True) for n in range(3)]
    story.append(client.emit("fail", "bad", callback=True))
    for refuse in ("socketio", "builtin"):
        story.append(sio.test_client(app, flask_test_client=http, auth={"refuse": refuse}).is_connected())
    story.append(http.get_cookie("session") is not None)
    return story


@pytest.mark.parametrize("manage_session", [True, False])
def test_realtime_socketio_handles_events_as_flask_socketio_does(manage_session):
    from deployment.patches.event_context import RealtimeSocketIO, replicates_flask_socketio

    assert replicates_flask_socketio()  # the pinned versions: the faster method is the one in use
    assert RealtimeSocketIO._handle_event is not SocketIO._handle_event
    ours = session_story(RealtimeSocketIO, manage_session)
    assert ours == session_story(SocketIO, manage_session)
    if manage_session:  # the connection's own copy: what connect and each event wrote stays
        assert ours[0]["session"] == {"user": "ada", "auth": {"token": 1}, "count": 1}
        assert ours[2]["session"]["count"] == 3
    else:  # Flask's cookie session, read again for each event: the login's user only
        assert ours[0]["session"] == ours[2]["session"] == {"user": "ada", "count": 1}
    assert ours[0]["event"] == {"message": "look", "args": [0]} and ours[1]["namespace"] == "/"
    assert ours[3] == {"error": "ValueError('bad')"} and ours[4:6] == [False, True]


def test_other_flask_socketio_versions_keep_its_own_method(monkeypatch):
    from deployment.patches import event_context

    monkeypatch.setattr(event_context, "FLASK_SOCKETIO_HANDLE_EVENT_SHA256", "0" * 64)
    assert not event_context.replicates_flask_socketio()


def test_the_template_app_uses_realtime_socketio(app):
    from stack_app import socketio

    from deployment.patches.event_context import RealtimeSocketIO

    assert socketio._handle_event.__func__ is RealtimeSocketIO._handle_event
