"""Unit tests: settings, the io cookie option, the probe events (Flask-SocketIO's test client), routes, and the
deployment layer as a Flask extension (PROBES, REQUIRE_LOGIN's gate, init_app)."""

import pytest

from deployment.settings import ConfigError, CookieSettings, Settings

DEV = {"APP_ENV": "development"}


def received(client, name):
    """Payloads of the events `name` that a test client got (one argument per event here)."""
    return [
        e["args"][0] if isinstance(e["args"], list) else e["args"] for e in client.get_received() if e["name"] == name
    ]


def test_production_refuses_missing_or_default_secret_key():
    for env in ({}, {"SECRET_KEY": "dev"}, {"SECRET_KEY": "changeme"}, {"SECRET_KEY": "short"}):
        with pytest.raises(ConfigError, match="SECRET_KEY"):
            Settings.from_env(env)
    assert Settings.from_env({"SECRET_KEY": "x" * 32}).secret_key == "x" * 32
    assert Settings.from_env(DEV).development  # development may run without one


def test_secret_key_from_file(tmp_path):
    secret = tmp_path / "secret_key"
    secret.write_text("s" * 40 + "\n")
    assert Settings.from_env({"SECRET_KEY_FILE": str(secret)}).secret_key == "s" * 40
    with pytest.raises(ConfigError, match="SECRET_KEY_FILE"):
        Settings.from_env({"SECRET_KEY_FILE": str(tmp_path / "missing")})


def test_cors_wildcard_and_bad_origins_are_refused():
    with pytest.raises(ConfigError, match=r"CORS_ALLOWED_ORIGINS=\*"):
        Settings.from_env({**DEV, "CORS_ALLOWED_ORIGINS": "*"})
    with pytest.raises(ConfigError, match="must start with http"):
        Settings.from_env({**DEV, "CORS_ALLOWED_ORIGINS": "example.com"})
    settings = Settings.from_env({**DEV, "CORS_ALLOWED_ORIGINS": "https://a.example, https://b.example"})
    assert settings.cors_allowed_origins == ("https://a.example", "https://b.example")


def test_malformed_numbers_and_booleans_name_the_variable():
    with pytest.raises(ConfigError, match="PING_INTERVAL"):
        Settings.from_env({**DEV, "PING_INTERVAL": "soon"})
    with pytest.raises(ConfigError, match="IO_COOKIE_HTTPONLY"):
        Settings.from_env({**DEV, "IO_COOKIE_HTTPONLY": "maybe"})
    with pytest.raises(ConfigError, match="REDIS_URL"):
        Settings.from_env({**DEV, "REDIS_URL": "amqp://localhost"})


def test_redis_password_goes_into_url_and_is_masked_in_logs():
    settings = Settings.from_env({**DEV, "REDIS_URL": "redis://redis:6379/0", "REDIS_PASSWORD": "p@ss"})
    assert settings.redis_url == "redis://:p%40ss@redis:6379/0"
    assert "p%40ss" not in str(settings.public_dict())


def test_default_io_cookie_option_matches_socketio_js_default():
    # JS `cookie: true` = {name: "io", path: "/", httpOnly: true, sameSite: "lax"}
    assert CookieSettings().engineio_option() == {"name": "io", "Path": "/", "HttpOnly": True, "SameSite": "Lax"}


def test_effective_config_is_logged_once_with_secrets_masked(caplog):
    from stack_app import create_app

    secret = "k" * 40
    with caplog.at_level("INFO", logger="app"):
        create_app(Settings.from_env({"SECRET_KEY": secret, "INSTANCE_NAME": "unit"}))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("effective config")]
    assert len(lines) == 1
    assert secret not in lines[0] and '"secret_key": "***"' in lines[0]


def test_echo_whoami_and_rooms_with_test_client(sio_test_client):
    alice, bob = sio_test_client(), sio_test_client()
    assert alice.emit("echo", {"a": [1, 2]}, callback=True) == {"a": [1, 2]}
    assert alice.emit("whoami", callback=True) == "unit"
    assert alice.emit("join", {"room": "r1"}, callback=True) == {"ok": True, "room": "r1"}
    assert bob.emit("say", {"room": "r1", "message": "hello"}, callback=True) == {"ok": True}
    assert [m["message"] for m in received(alice, "message")] == ["hello"]
    assert received(bob, "message") == []  # bob is not a member
    assert alice.emit("leave", {"room": "r1"}, callback=True) == {"ok": True, "room": "r1"}


def test_broadcast_reaches_every_client(sio_test_client):
    first, second = sio_test_client(), sio_test_client()
    first.emit("broadcast", {"n": 1}, callback=True)
    for client in (first, second):
        assert received(client, "broadcast") == [{"n": 1}]


@pytest.mark.parametrize(
    "event,data",
    [
        ("join", None),
        ("join", {"room": 5}),
        ("leave", "r"),
        ("say", {"room": "r"}),
        ("say", {"room": "r", "message": 1}),
    ],
)
def test_bad_event_input_gets_an_error_ack(sio_test_client, event, data):
    client = sio_test_client()
    reply = client.emit(event, data, callback=True)
    assert "error" in reply and event in reply["error"]
    assert client.is_connected()


def test_health_routes(app):
    http = app.test_client()
    assert http.get("/healthz").get_json() == {"status": "ok", "instance": "unit"}
    ready = http.get("/readyz")
    assert ready.status_code == 200 and ready.get_json()["message_queue"] == "none"


def test_readyz_turns_503_while_draining(app):
    from deployment.operations import health

    health.draining.set()
    try:
        assert app.test_client().get("/readyz").status_code == 503
    finally:
        health.draining.clear()


# --- the deployment layer as a Flask extension, on apps of its own --------------------------------------------


def bare_app(**env):
    """A Flask app and SocketIO object of their own, with the deployment layer (what a user's app.py does)."""
    from flask import Flask
    from flask_socketio import SocketIO

    from deployment.extension import Deployment

    app, socketio = Flask("bare"), SocketIO()
    return app, socketio, Deployment(), Settings.from_env({**DEV, "INSTANCE_NAME": "unit", **env})


def test_probes_false_serves_only_the_apps_own_events():
    app, socketio, deployment, settings = bare_app(PROBES="false")

    @socketio.on("ping_me")
    def ping_me(_data=None):
        return "pong"

    deployment.init_app(app, socketio, settings)
    client = socketio.test_client(app)
    assert client.emit("ping_me", callback=True) == "pong"
    assert client.emit("echo", {"a": 1}, callback=True) == {"error": "unknown event 'echo'"}
    # control: the same app with the probes on answers echo
    app2, socketio2, deployment2, settings2 = bare_app()
    deployment2.init_app(app2, socketio2, settings2)
    assert socketio2.test_client(app2).emit("echo", {"a": 1}, callback=True) == {"a": 1}


def test_a_handler_named_like_a_probe_event_stops_the_start_with_one_line():
    app, socketio, deployment, settings = bare_app()

    @socketio.on("echo")
    def my_echo(data=None):
        return "mine"

    with pytest.raises(RuntimeError, match=r"\['echo'\].*PROBES=false"):
        deployment.init_app(app, socketio, settings)
    app, _unused, deployment, settings = bare_app(PROBES="false")
    deployment.init_app(app, socketio, settings)  # with PROBES=false the name is the app's
    assert socketio.test_client(app).emit("echo", callback=True) == "mine"


def test_require_login_refuses_every_namespace_whatever_its_own_connect_handler_does():
    app, socketio, deployment, settings = bare_app(REQUIRE_LOGIN="true")
    socketio.on("connect", namespace="/mine")(lambda auth=None: True)  # a user's handler that accepts everyone
    socketio.on("hello", namespace="/mine")(lambda _data=None: "hi")
    deployment.init_app(app, socketio, settings)
    anonymous = socketio.test_client(app, namespace="/mine")
    assert not anonymous.is_connected("/mine")
    assert not socketio.test_client(app).is_connected()  # the default namespace has no handler of its own
    http = app.test_client()
    assert http.post("/login", json={"name": "ada"}).status_code == 200
    signed_in = socketio.test_client(app, namespace="/mine", flask_test_client=http)
    assert signed_in.is_connected("/mine") and signed_in.emit("hello", callback=True, namespace="/mine") == "hi"


def fake_python_socketio(monkeypatch, version="5.18.99"):
    """Every pin now finds a python-socketio version nobody verified (a patch release, say)."""
    from deployment.patches import pins

    installed = pins.installed_version
    monkeypatch.setattr(
        pins, "installed_version", lambda dist: version if dist == "python-socketio" else installed(dist)
    )


@pytest.mark.parametrize("verified", [True, False], ids=["verified python-socketio", "unverified python-socketio"])
def test_require_login_gates_through_public_doors_whatever_the_python_socketio_version(monkeypatch, verified):
    """The gate is put on each handler as it is registered (python-socketio's public on()/register_namespace()),
    so an unverified python-socketio changes nothing: it still refuses, and the start goes on."""
    from deployment.patches import pins, socketio_hooks

    if not verified:
        fake_python_socketio(monkeypatch)
    assert bool(pins.mismatches(socketio_hooks.VERIFIED)) is not verified  # the fake works
    app, socketio, deployment, settings = bare_app(REQUIRE_LOGIN="true")
    deployment.init_app(app, socketio, settings)
    socketio.on("connect", namespace="/late")(lambda auth=None: True)  # registered after init_app: gated too
    assert not socketio.test_client(app).is_connected()
    assert not socketio.test_client(app, namespace="/late").is_connected("/late")
    http = app.test_client()
    assert http.post("/login", json={"name": "ada"}).status_code == 200
    assert socketio.test_client(app, flask_test_client=http).is_connected()
    assert socketio.test_client(app, namespace="/late", flask_test_client=http).is_connected("/late")


def test_require_login_gates_class_based_namespaces_registered_before_and_after_init_app():
    from flask_socketio import Namespace

    connected = []

    class Board(Namespace):
        def on_connect(self, auth=None):
            connected.append(self.namespace)

        def on_hello(self, _data=None):
            return "hi"

    app, socketio, deployment, settings = bare_app(REQUIRE_LOGIN="true")
    socketio.on_namespace(Board("/before"))
    deployment.init_app(app, socketio, settings)
    socketio.on_namespace(Board("/after"))
    for namespace in ("/before", "/after"):
        assert not socketio.test_client(app, namespace=namespace).is_connected(namespace)
    assert connected == []  # refused before the namespace's own connect handler ran
    http = app.test_client()
    http.post("/login", json={"name": "ada"})
    for namespace in ("/before", "/after"):
        client = socketio.test_client(app, namespace=namespace, flask_test_client=http)
        assert client.is_connected(namespace) and client.emit("hello", callback=True, namespace=namespace) == "hi"
    assert connected == ["/before", "/after"]


def test_a_class_based_namespace_bound_again_to_a_new_app_keeps_none_of_the_old_apps_gate():
    """One SocketIO object bound to a second app (as tests do, one create_app() each): its class-based namespace
    object is registered on the new server again; the first app's REQUIRE_LOGIN gate must not come along."""
    from flask import Flask
    from flask_socketio import Namespace

    from deployment.extension import Deployment

    class Board(Namespace):
        def on_hello(self, _data=None):
            return "hi"

    first, socketio, deployment, settings = bare_app(REQUIRE_LOGIN="true")
    socketio.on_namespace(Board("/board"))
    deployment.init_app(first, socketio, settings)
    assert not socketio.test_client(first, namespace="/board").is_connected("/board")  # gated there
    second = Flask(__name__)
    second.config["SECRET_KEY"] = "x" * 32
    Deployment().init_app(second, socketio, Settings.from_env({"APP_ENV": "development"}))
    client = socketio.test_client(second, namespace="/board")
    assert client.is_connected("/board") and client.emit("hello", callback=True, namespace="/board") == "hi"


def test_init_app_twice_on_one_app_is_refused():
    app, socketio, deployment, settings = bare_app()
    deployment.init_app(app, socketio, settings)
    with pytest.raises(RuntimeError, match="already"):
        deployment.init_app(app, socketio, settings)
