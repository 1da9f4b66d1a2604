"""deployment/operations/session_cache.py: the session interface the speedup sets on app.session_interface (Flask's
public extension point) answers as Flask's own SecureCookieSessionInterface does, the control run beside it in
each test: a changed SECRET_KEY, a tampered cookie, SECRET_KEY_FALLBACKS, no secret key. It keeps the serializer
while the keys stay the same, and Socket.IO events after connect do not read the cookie again."""

import pytest
from flask import Flask, session
from flask.sessions import SecureCookieSessionInterface

from deployment.operations import session_cache
from deployment.operations.session_cache import CachedSerializerSessionInterface
from deployment.settings import Settings

INTERFACES = {"flask": SecureCookieSessionInterface, "cached": CachedSerializerSessionInterface}
KEY_A, KEY_B, KEY_C = "a" * 40, "b" * 40, "c" * 40


def make_app(interface, secret_key=KEY_A):
    app = Flask("sessions")
    app.secret_key = secret_key
    app.session_interface = INTERFACES[interface]()

    @app.post("/set/<value>")
    def set_value(value):
        session["value"] = value
        return "ok"

    @app.get("/get")
    def get_value():
        return {"value": session.get("value")}

    return app


def cookie_from(app):
    """A session cookie that app signs now with its current keys."""
    client = app.test_client()
    assert client.post("/set/hello").status_code == 200
    return client.get_cookie("session").value


def read(app, cookie):
    """What app's /get reads from a request that carries this session cookie."""
    client = app.test_client()
    client.set_cookie("session", cookie)
    return client.get("/get").get_json()["value"]


def both(scenario):
    """The scenario's answers with Flask's interface and with the cached one: they must be the same."""
    answers = {name: scenario(name) for name in INTERFACES}
    assert answers["cached"] == answers["flask"], answers
    return answers["flask"]


def test_a_cookie_signed_with_the_key_is_read_back():
    assert both(lambda name: read(make_app(name), cookie_from(make_app(name)))) == "hello"


def test_a_changed_secret_key_refuses_the_old_cookie():
    def scenario(name):
        app = make_app(name)
        cookie = cookie_from(app)
        before = read(app, cookie)  # the serializer of KEY_A is built (and, for the cached one, kept)
        app.secret_key = KEY_B
        return before, read(app, cookie), read(app, cookie_from(app))

    assert both(scenario) == ("hello", None, "hello")


@pytest.mark.parametrize("where", ["payload", "timestamp", "signature"])
def test_a_tampered_cookie_is_refused(where):
    def scenario(name):
        app = make_app(name)
        cookie = cookie_from(app)
        payload, timestamp, signature = cookie.rsplit(".", 2)
        parts = {"payload": payload, "timestamp": timestamp, "signature": signature}
        value = parts[where]
        parts[where] = value[:-2] + ("AA" if value[-2:] != "AA" else "BB")
        return read(app, cookie), read(app, ".".join(parts.values()))

    assert both(scenario) == ("hello", None)


def test_secret_key_fallbacks_accept_old_cookies_until_removed():
    def scenario(name):
        app = make_app(name)
        old = cookie_from(app)
        read(app, old)
        app.secret_key = KEY_B
        app.config["SECRET_KEY_FALLBACKS"] = [KEY_A]
        with_fallback = read(app, old)
        new = cookie_from(app)  # signed with the current key, not the fallback
        app.config["SECRET_KEY_FALLBACKS"] = [KEY_C]
        other_fallback = read(app, old)
        app.config["SECRET_KEY_FALLBACKS"] = []
        return with_fallback, other_fallback, read(app, old), read(app, new)

    assert both(scenario) == ("hello", None, None, "hello")


def test_the_fallback_list_changed_in_place_is_seen():
    """Flask reads SECRET_KEY_FALLBACKS on each opening: a list edited in place (not replaced) counts too."""

    def scenario(name):
        app = make_app(name)
        old = cookie_from(app)
        app.secret_key = KEY_B
        app.config["SECRET_KEY_FALLBACKS"] = fallbacks = [KEY_A]
        accepted = read(app, old)
        fallbacks.clear()
        return accepted, read(app, old)

    assert both(scenario) == ("hello", None)


def test_no_secret_key_gives_flasks_null_session():
    def scenario(name):
        app = make_app(name, secret_key=None)
        client = app.test_client()
        app.testing = False  # the route's error as a 500, as in production
        cookie = cookie_from(make_app(name))  # signed elsewhere: never read without a key
        client.set_cookie("session", cookie)
        return client.get("/get").get_json()["value"], client.post("/set/x").status_code

    assert both(scenario) == (None, 500)
    app = make_app("cached", secret_key=None)
    with app.test_request_context("/"):
        with pytest.raises(RuntimeError, match="secret key"):
            session["value"] = 1


def test_a_key_removed_after_use_gives_the_null_session_too():
    def scenario(name):
        app = make_app(name)
        cookie = cookie_from(app)
        before = read(app, cookie)
        app.secret_key = None
        return before, read(app, cookie), app.session_interface.get_signing_serializer(app)

    assert both(scenario) == ("hello", None, None)


def test_the_serializer_is_kept_while_the_keys_stay_the_same():
    app = make_app("cached")
    interface = app.session_interface
    first = interface.get_signing_serializer(app)
    assert interface.get_signing_serializer(app) is first
    assert read(app, cookie_from(app)) == "hello"
    assert interface.get_signing_serializer(app) is first  # the requests used it too
    app.secret_key = KEY_B
    second = interface.get_signing_serializer(app)
    assert second is not first and interface.get_signing_serializer(app) is second
    app.config["SECRET_KEY_FALLBACKS"] = [KEY_A]
    third = interface.get_signing_serializer(app)
    assert third is not second and interface.get_signing_serializer(app) is third
    other = make_app("cached")  # one per app: another app's keys never mix in
    assert other.session_interface.get_signing_serializer(other) is not third
    # the control: Flask's own interface builds one for each call
    flask_app = make_app("flask")
    control = flask_app.session_interface
    assert control.get_signing_serializer(flask_app) is not control.get_signing_serializer(flask_app)


def test_the_speedup_sets_it_and_the_start_log_names_it(app, caplog):
    assert type(app.session_interface) is CachedSerializerSessionInterface
    from stack_app import create_app

    with caplog.at_level("INFO", logger="patches"):
        off = create_app(Settings.from_env({"APP_ENV": "development", "SPEEDUPS_SKIP": "session_cache"}))
    assert type(off.session_interface) is SecureCookieSessionInterface
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("speedups on: ")]
    assert "session_cache" not in line


def test_an_apps_own_session_interface_is_kept(caplog):
    class ServerSide(SecureCookieSessionInterface):
        pass

    app = Flask("own")
    app.session_interface = own = ServerSide()
    with caplog.at_level("WARNING", logger="patches"):
        assert session_cache.install(None, app, None) is False
    assert app.session_interface is own
    assert any("speedup session_cache stays off" in r.getMessage() for r in caplog.records)


def received(client, name):
    """Payloads of the events `name` that a test client got (one argument per event here)."""
    return [
        e["args"][0] if isinstance(e["args"], list) else e["args"] for e in client.get_received() if e["name"] == name
    ]


def app_with_own_handle_event():
    """The deployment layer with event_context off on a SocketIO object of its own: Flask-SocketIO's own
    _handle_event, the code that sets environ["saved_session"], runs the events."""
    from flask_socketio import SocketIO

    from deployment.extension import Deployment

    app, socketio = Flask("own_handle_event"), SocketIO()
    Deployment().init_app(
        app, socketio, Settings.from_env({"APP_ENV": "development", "SPEEDUPS_SKIP": "event_context"})
    )
    assert socketio._handle_event.__func__ is SocketIO._handle_event
    return app, lambda **kwargs: socketio.test_client(app, **kwargs)


@pytest.mark.parametrize("handle_event", ["event_context", "flask_socketio"])
@pytest.mark.parametrize("interface", INTERFACES)
def test_socketio_events_read_the_cookie_once_and_keep_the_session(request, monkeypatch, interface, handle_event):
    """With Flask-SocketIO's managed session the cookie is read at connect only with the cached interface; each
    event with Flask's own (the control). Handlers see the same session with both; with event_context's
    _handle_event and with Flask-SocketIO's own."""
    if handle_event == "event_context":
        app, sio_test_client = request.getfixturevalue("app"), request.getfixturevalue("sio_test_client")
    else:
        app, sio_test_client = app_with_own_handle_event()
    app.session_interface = INTERFACES[interface]()
    http = app.test_client()
    assert http.post("/login", json={"name": "carol"}).get_json() == {"user": "carol"}
    opened = []  # cookie sessions actually read (the serializer is fetched for each)
    original = type(app.session_interface).get_signing_serializer
    monkeypatch.setattr(
        app.session_interface,
        "get_signing_serializer",
        lambda a: opened.append(1) or original(app.session_interface, a),
    )
    client = sio_test_client(flask_test_client=http)
    assert len(opened) <= 1  # at most at connect (the probes have no connect handler: none needs it yet)
    assert client.emit("join", {"room": "r2"}, callback=True) == {"ok": True, "room": "r2"}
    for _ in range(3):
        assert client.emit("say", {"room": "r2", "message": "hi"}, callback=True) == {"ok": True}
    assert [m["user"] for m in received(client, "message")] == ["carol"] * 3  # the session of the handshake
    if interface == "cached":
        assert len(opened) == 1  # read once: later events use Flask-SocketIO's copy, without reading it again
    else:
        assert len(opened) >= 4  # Flask's own interface reads it on every event
    assert http.get("/me").get_json()["user"] == "carol"  # HTTP requests still read the cookie
