"""The event_context speedup: RealtimeFlask (deployment/operations/realtime_flask.py) binds and matches the URL of
Socket.IO events once per connection and skips empty teardowns, and Flask-SocketIO's `_handle_event` is replaced
(deployment/patches/event_context.py); handlers and HTTP routes see exactly what plain Flask gives them (the
control), and with the speedup off RealtimeFlask is Flask."""

import logging

import pytest
from flask import Flask, Request, request, url_for
from flask.ctx import RequestContext
from flask_socketio import SocketIO
from werkzeug.routing import Map

from deployment.operations import realtime_flask
from deployment.operations.realtime_flask import RealtimeFlask, RealtimeRequest
from deployment.settings import Settings


def speedup_on(name):
    """A RealtimeFlask with the event_context speedup's Flask part on, as install() leaves it."""
    app = RealtimeFlask(name)
    realtime_flask.turn_on(app)
    return app


speedup_off = RealtimeFlask  # the speedup not installed (SPEEDUPS=off, SPEEDUPS_SKIP=event_context): plain Flask


def build(make_app, **config):
    app = make_app(__name__)
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
            "trusted_hosts": request.trusted_hosts,  # set by Flask's create_url_adapter with TRUSTED_HOSTS
        }

    return app, sio


def drive(make_app, **config):
    app, sio = build(make_app, **config)
    client = sio.test_client(app)
    answers = [client.emit("probe", n, callback=True) for n in (1, 2, 3)]
    http = [app.test_client().get(f"/items/{n}").get_json() for n in (4, 5)]
    assert len({answer.pop("sid") for answer in answers}) == 1  # one connection
    return answers, http


@pytest.mark.parametrize("make_app", [speedup_on, speedup_off], ids=["speedup_on", "speedup_off"])
@pytest.mark.parametrize("config", [{}, {"TRUSTED_HOSTS": ["localhost"]}, {"SERVER_NAME": "example.test"}])
def test_handlers_and_routes_see_what_plain_flask_gives(make_app, config):
    assert drive(make_app, **config) == drive(Flask, **config)


def test_handlers_build_urls_and_routes_get_their_view_args():
    answers, http = drive(speedup_on)
    assert [a["url"] for a in answers] == [f"http://localhost/items/{n}" for n in (1, 2, 3)]
    assert answers[0]["routing_exception"] == "NotFound"  # /socket.io/ is no Flask route
    assert http == [{"n": n, "view_args": {"n": n}, "rule": "/items/<int:n>"} for n in (4, 5)]


def count_binds(monkeypatch, make_app, events):
    binds = []
    original = Map.bind_to_environ

    def counting(self, environ, *args, **kwargs):
        binds.append(environ.get("PATH_INFO"))
        return original(self, environ, *args, **kwargs)

    monkeypatch.setattr(Map, "bind_to_environ", counting)
    app, sio = build(make_app)
    client = sio.test_client(app)
    for n in range(events):
        client.emit("probe", n, callback=True)
    return len(binds)


def test_events_bind_the_url_once_per_connection(monkeypatch):
    assert count_binds(monkeypatch, Flask, 5) == 5  # the control: plain Flask binds on every event
    assert count_binds(monkeypatch, speedup_off, 5) == 5  # the speedup off: as plain Flask
    assert count_binds(monkeypatch, speedup_on, 5) == 1  # on the first, kept in the environ since


def test_an_environ_two_apps_see_gets_each_its_own_url_adapter():
    first, second = speedup_on("first"), speedup_on("second")
    first.add_url_rule("/a", "a", lambda: "a")
    second.add_url_rule("/b", "b", lambda: "b")
    environ = first.test_request_context("/b").request.environ
    with first.request_context(environ):
        assert url_for("a") == "/a" and request.url_rule is None
    with second.request_context(environ):
        assert url_for("b") == "/b" and request.url_rule.rule == "/b"


def test_with_the_speedup_off_every_method_is_flasks():
    off, on = speedup_off(__name__), speedup_on(__name__)
    assert type(off.test_request_context()) is RequestContext and off.request_class is Request
    assert type(on.test_request_context()) is realtime_flask.CachedRouteRequestContext  # the control
    assert on.request_class is RealtimeRequest


def test_the_template_app_uses_it(app):
    assert isinstance(app, RealtimeFlask) and app.event_context_speedup
    assert app.request_class is RealtimeRequest


def deployed(app, **env):
    """`app` with the deployment layer and a SocketIO object of its own (what app.py does); the patches' log."""
    from deployment.extension import Deployment

    socketio = SocketIO()
    socketio.on("hello")(lambda data=None: "hi")
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("patches")
    logger.addHandler(handler)
    try:
        Deployment().init_app(
            app, socketio, Settings.from_env({"APP_ENV": "development", "INSTANCE_NAME": "unit", **env})
        )
    finally:
        logger.removeHandler(handler)
    assert socketio.test_client(app).emit("hello", callback=True) == "hi"  # it serves events either way
    assert app.test_client().get("/healthz").status_code == 200
    return socketio, [record.getMessage() for record in records]


@pytest.mark.parametrize("env", [{"SPEEDUPS": "off"}, {"SPEEDUPS_SKIP": "event_context"}])
def test_speedups_off_or_skipped_leave_realtime_flask_as_flask(env):
    app = RealtimeFlask("off")
    socketio, log = deployed(app, **env)
    assert not app.event_context_speedup and app.request_class is Request
    assert socketio._handle_event.__func__ is SocketIO._handle_event
    on = RealtimeFlask("on")  # the control: the same app with the speedups on
    socketio, log = deployed(on)
    assert on.event_context_speedup and on.request_class is RealtimeRequest
    assert "speedups on: event_context, " in " ".join(log)


def test_a_plain_flask_app_gets_one_line_and_still_works():
    from deployment.patches.event_context import RealtimeSocketIO

    app = Flask("plain")
    socketio, log = deployed(app)
    [line] = [line for line in log if "RealtimeFlask" in line]
    assert line.startswith("speedup event_context: the app is a Flask, not a RealtimeFlask"), line
    assert "speedups on: event_context, " in " ".join(log)  # its _handle_event part runs
    assert socketio._handle_event.__func__ is RealtimeSocketIO._handle_event
    assert app.request_class is Request and not hasattr(app, "event_context_speedup")


def test_install_says_on_only_if_a_part_runs(monkeypatch):
    """With the _handle_event copy's pins not matching, the speedup is on for a RealtimeFlask (its Flask part
    runs), and off for a plain Flask (nothing of it runs): one line says why."""
    from deployment.patches import event_context

    monkeypatch.setattr(event_context, "VERIFIED", {**event_context.VERIFIED, "flask-socketio": ("0.0.0.fake",)})
    socketio, log = deployed(RealtimeFlask("realtime"))
    assert socketio._handle_event.__func__ is SocketIO._handle_event
    assert [line for line in log if "stays off" in line] == [
        next(line for line in log if line.startswith("patch event_context stays off: flask-socketio "))
    ]
    assert "speedups on: event_context, " in " ".join(log)
    socketio, log = deployed(Flask("plain"))
    assert len([line for line in log if "stays off" in line]) == 2  # the patch's line, and the app's
    [started] = [line for line in log if line.startswith("speedups on: ")]
    assert "event_context" not in started


def test_the_kept_route_holds_no_frames():
    """The route is kept for the connection's lifetime: a NotFound with its traceback (and NoMatch's, as its
    context) would keep the connect handler's frames alive, about 8 KB per connection."""
    from deployment.operations.realtime_flask import ROUTE

    app, sio = build(speedup_on)
    client = sio.test_client(app)
    client.emit("probe", 1, callback=True)
    kept = [environ[ROUTE] for environ in sio.server.environ.values() if ROUTE in environ]
    assert kept
    for _, _, _, error in kept:
        assert type(error).__name__ == "NotFound"
        assert error.__traceback__ is None and error.__context__ is None


def teardowns(make_app, register):
    """What runs at the end of each Socket.IO event and HTTP request, with `register` hooking into the app."""
    app, sio = build(make_app)
    seen = []
    register(app, seen)
    sio.test_client(app).emit("probe", 1, callback=True)
    app.test_client().get("/items/2")
    return seen


def blueprint_tearing_down(seen):
    from flask import Blueprint

    bp = Blueprint("torn", __name__)
    bp.teardown_app_request(lambda exc: seen.append("blueprint, every request"))
    bp.teardown_request(lambda exc: seen.append("blueprint, its own requests"))  # none here
    return bp


@pytest.mark.parametrize(
    "register",
    [
        lambda app, seen: app.teardown_request(lambda exc: seen.append("teardown_request")),
        lambda app, seen: app.teardown_appcontext(lambda exc: seen.append("teardown_appcontext")),
        lambda app, seen: app.register_blueprint(blueprint_tearing_down(seen)),
    ],
    ids=["teardown_request", "teardown_appcontext", "blueprint"],
)
def test_teardown_functions_still_run_after_every_event_and_request(register):
    seen = teardowns(speedup_on, register)
    assert seen == teardowns(Flask, register) == teardowns(speedup_off, register)
    assert len(seen) >= 2  # the event and the HTTP request


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

    seen = teardowns(speedup_on, register)
    assert seen == teardowns(Flask, register) == teardowns(speedup_off, register)
    assert seen.count("request_tearing_down") >= 2 and seen.count("appcontext_tearing_down") >= 2


@pytest.mark.parametrize("make_app", [speedup_on, speedup_off, Flask], ids=["speedup_on", "speedup_off", "flask"])
def test_a_requests_uploaded_files_are_still_closed(make_app):
    from io import BytesIO

    app = make_app(__name__)
    uploads = []

    @app.post("/upload")
    def upload():
        uploads.append(request.files["f"])
        return "ok"

    assert app.test_client().post("/upload", data={"f": (BytesIO(b"data"), "f.txt")}).status_code == 200
    assert uploads[0].stream.closed


def test_realtime_request_is_used_only_where_werkzeug_keeps_parsed_files_where_it_looks(monkeypatch):
    assert realtime_flask.parsed_files_stay_in_dict()  # the werkzeug installed: RealtimeRequest is used
    monkeypatch.setattr(realtime_flask, "parsed_files_stay_in_dict", lambda: False)  # another werkzeug
    assert speedup_on(__name__).request_class is Request


def test_an_apps_own_request_class_is_kept():
    class MyRequest(Request):
        pass

    class MyFlask(RealtimeFlask):
        request_class = MyRequest

    app = MyFlask(__name__)
    realtime_flask.turn_on(app)
    assert app.request_class is MyRequest and app.event_context_speedup


def session_app(socketio_class, manage_session):
    """Handlers that read and write the session, read request.*, fail, refuse, and take auth."""
    import flask
    import flask_socketio

    app = speedup_on(__name__)
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
