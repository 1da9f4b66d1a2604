"""Prometheus metrics: the hooks in process (a private Flask-SocketIO app), then a running native stack scraped
instance by instance, and HAProxy's own exporter on its private stats port."""

import queue
import uuid

import pytest
import requests
import socketio
from flask import Flask
from flask_socketio import ConnectionRefusedError, SocketIO
from prometheus_client.parser import text_string_to_metric_families

from deployment.operations import instrument, metrics
from deployment.settings import Settings

INSTANCE_METRICS = {  # family name: type
    "socketio_connected_clients": "gauge",
    "socketio_queued_packets": "gauge",
    "socketio_queued_packets_max": "gauge",
    "socketio_events_received": "counter",
    "socketio_events_emitted": "counter",
    "socketio_handshake_failures": "counter",
    "socketio_message_queue_errors": "counter",
    "socketio_handler_errors": "counter",
    "socketio_handler_seconds": "histogram",
    "socketio_instance_info": "gauge",
}


def parse(text):
    """{(sample name, ((label, value), ...)): value} of a /metrics text."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples, metric, **labels):
    return samples.get((metric, tuple(sorted(labels.items()))), 0.0)


def scrape(url, families=None):
    response = requests.get(url + "/metrics", timeout=5)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    if families is not None:
        families.update({family.name: family.type for family in text_string_to_metric_families(response.text)})
    return parse(response.text)


# --- in process --------------------------------------------------------------------------------------------


@pytest.fixture
def private_app():
    """A Flask-SocketIO app of its own (not the template's), instrumented the same way."""
    app = Flask(__name__)
    app.config["SETTINGS"] = Settings.from_env({"APP_ENV": "development", "INSTANCE_NAME": "metrics-unit"})
    app.register_blueprint(metrics.bp)
    server = SocketIO(app)

    @server.on("ping_me")
    def ping_me(data=None):
        server.emit("pong_you", data)
        return "ok"

    @server.on("boom")
    def boom(_data=None):
        raise RuntimeError("handler failed on purpose")

    @server.on("connect", namespace="/picky")
    def picky(auth=None):
        if not auth:
            raise ConnectionRefusedError("no auth")

    @server.on("*")
    def anything(event, data=None):  # the deployment's limits.py puts such a catch-all on every namespace
        return None

    instrument.install(server, app)
    return app, server


def test_the_hooks_go_through_public_doors_only(private_app):
    """Every handler wrapped as it was registered (python-socketio's public on()), emit() and handle_request()
    wrapped on the server objects; none of python-socketio's or python-engineio's internals replaced."""
    import engineio

    app, server = private_app
    sio = server.server
    assert sio._trigger_event.__func__ is socketio.Server._trigger_event  # the library's own
    assert sio.eio._bad_request.__func__ is engineio.Server._bad_request
    door = sio._deployment_door
    for namespace, events in sio.handlers.items():
        for event, handler in events.items():
            assert getattr(handler, "deployment_door", None) is door, (namespace, event)
    assert sio.on.__qualname__.startswith("HandlerDoor.install")  # later registrations: wrapped as they come
    assert sio.emit.__qualname__.startswith("_wrap_emit")
    assert sio.eio.handle_request.__qualname__.startswith("_count_bad_requests")
    assert any(isinstance(f, instrument.QueueErrorCounter) for f in sio.logger.filters)
    wrapped, handlers = sio.emit, {ns: dict(events) for ns, events in sio.handlers.items()}
    instrument.install(server, app)  # a second call wraps nothing twice
    assert sio.emit is wrapped and {ns: dict(events) for ns, events in sio.handlers.items()} == handlers


def test_events_latency_errors_and_refusals_are_counted(private_app):
    app, server = private_app
    before = parse(app.test_client().get("/metrics").get_data(as_text=True))
    client = server.test_client(app)
    assert client.emit("ping_me", {"n": 1}, callback=True) == "ok"
    client.emit("ping_me", {"n": 2}, callback=True)
    client.emit("no_such_event", {})  # unknown names share one label: clients cannot grow the label set
    with pytest.raises(RuntimeError):
        client.emit("boom", {})
    refused = server.test_client(app, namespace="/picky")
    assert not refused.is_connected("/picky")
    client.disconnect()
    after = parse(app.test_client().get("/metrics").get_data(as_text=True))

    def delta(metric, **labels):
        return value(after, metric, **labels) - value(before, metric, **labels)

    assert delta("socketio_events_received_total", namespace="/", event="ping_me") == 2
    assert delta("socketio_events_received_total", namespace="/", event="_unknown") == 1
    assert value(after, "socketio_events_received_total", namespace="/", event="no_such_event") == 0
    assert delta("socketio_events_emitted_total", namespace="/", event="pong_you") == 2
    assert delta("socketio_handler_seconds_count", namespace="/", event="ping_me") == 2
    assert delta("socketio_handler_seconds_count", namespace="/", event="connect") >= 1
    assert delta("socketio_handler_seconds_count", namespace="/", event="disconnect") == 1
    assert delta("socketio_handler_errors_total", namespace="/", event="boom") == 1
    assert delta("socketio_handshake_failures_total", reason="refused") == 1
    assert value(after, "socketio_instance_info", name="metrics-unit") == 1


def test_handlers_registered_after_install_and_class_namespaces_are_counted(private_app):
    from flask_socketio import Namespace

    app, server = private_app

    class Board(Namespace):
        def on_post(self, _data=None):
            return "posted"

    @server.on("late")
    def late(_data=None):
        return "late"

    server.on_namespace(Board("/board"))
    before = parse(app.test_client().get("/metrics").get_data(as_text=True))
    client = server.test_client(app)
    assert client.emit("late", callback=True) == "late"
    board = server.test_client(app, namespace="/board")  # no connect handler: counted all the same
    assert board.emit("post", callback=True, namespace="/board") == "posted"
    board.emit("nothing_here", namespace="/board")
    board.disconnect(namespace="/board")
    after = parse(app.test_client().get("/metrics").get_data(as_text=True))

    def delta(metric, **labels):
        return value(after, metric, **labels) - value(before, metric, **labels)

    assert delta("socketio_events_received_total", namespace="/", event="late") == 1
    assert delta("socketio_events_received_total", namespace="/board", event="post") == 1
    assert delta("socketio_events_received_total", namespace="/board", event="_unknown") == 1
    assert delta("socketio_handler_seconds_count", namespace="/board", event="connect") == 1
    assert delta("socketio_handler_seconds_count", namespace="/board", event="disconnect") == 1


def fake_python_socketio(monkeypatch, version="5.18.99"):
    """Every pin now finds a python-socketio version nobody verified (a patch release, say)."""
    from deployment.patches import pins

    installed = pins.installed_version
    monkeypatch.setattr(
        pins, "installed_version", lambda dist: version if dist == "python-socketio" else installed(dist)
    )


def test_an_unverified_python_socketio_is_counted_all_the_same(monkeypatch):
    """No hook of the metrics depends on python-socketio's internals (without a manager of python-socketio's own,
    below): a patch release counts as the verified one does."""
    from deployment.patches import pins, socketio_hooks

    fake_python_socketio(monkeypatch)
    assert pins.mismatches(socketio_hooks.VERIFIED) == {"python-socketio": "5.18.99"}
    app = Flask(__name__)
    app.config["SETTINGS"] = Settings.from_env({"APP_ENV": "development", "INSTANCE_NAME": "metrics-unit"})
    app.register_blueprint(metrics.bp)
    server = SocketIO(app)
    server.on("tick")(lambda _data=None: "tock")
    instrument.install(server, app)
    before = parse(app.test_client().get("/metrics").get_data(as_text=True))
    client = server.test_client(app)
    assert client.emit("tick", callback=True) == "tock"
    client.disconnect()
    assert app.test_client().get("/socket.io/?EIO=4&transport=polling&sid=nope").status_code == 400
    after = parse(app.test_client().get("/metrics").get_data(as_text=True))
    for metric, labels in [
        ("socketio_events_received_total", {"namespace": "/", "event": "tick"}),
        ("socketio_handler_seconds_count", {"namespace": "/", "event": "connect"}),
        ("socketio_handler_seconds_count", {"namespace": "/", "event": "disconnect"}),
        ("socketio_handshake_failures_total", {"reason": "invalid_session"}),
    ]:
        assert value(after, metric, **labels) - value(before, metric, **labels) == 1, (metric, labels)


def test_engineio_400s_are_counted_by_reason(private_app):
    app, _server = private_app
    http = app.test_client()
    before = parse(http.get("/metrics").get_data(as_text=True))
    assert http.get("/socket.io/?EIO=4&transport=polling&sid=nope").status_code == 400
    assert http.get("/socket.io/?EIO=3&transport=polling").status_code == 400
    assert (
        http.get("/socket.io/?EIO=4&transport=polling", headers={"Origin": "https://evil.example"}).status_code == 400
    )
    after = parse(http.get("/metrics").get_data(as_text=True))
    for reason in ("invalid_session", "unsupported_version", "bad_origin"):
        assert (
            value(after, "socketio_handshake_failures_total", reason=reason)
            - value(before, "socketio_handshake_failures_total", reason=reason)
            == 1
        ), reason


@pytest.mark.parametrize("verified", [True, False], ids=["verified", "unverified python-socketio"])
@pytest.mark.parametrize("manager_class", ["stock", "template"])
def test_message_queue_errors_are_counted(manager_class, verified, monkeypatch):
    """A real manager whose Redis is a closed port: the publish of an emit is dropped and counted. The template's
    QueueManager through its own methods, whatever the python-socketio version; python-socketio's RedisManager
    through deployment/patches/socketio_hooks.py, pinned: with an unverified version instrument refuses it, one
    line naming the versions and the way out, instead of counting nothing."""
    from native_stack import free_port

    from deployment.operations.queue_manager import QueueManager
    from deployment.settings import ConfigError

    if not verified:
        fake_python_socketio(monkeypatch)
    url = f"redis://127.0.0.1:{free_port()}/0"
    manager = socketio.RedisManager(url) if manager_class == "stock" else QueueManager(url)
    app = Flask(__name__)
    app.config["SETTINGS"] = Settings.from_env({"APP_ENV": "development", "INSTANCE_NAME": "mq-unit"})
    app.register_blueprint(metrics.bp)
    server = SocketIO(app, client_manager=manager)
    if manager_class == "stock" and not verified:
        with pytest.raises(ConfigError) as refused:
            instrument.install(server, app)
        assert str(refused.value).count("\n") == 0
        assert "python-socketio 5.18.99 is not a version" in str(refused.value)
        assert "install python-socketio 5.18.1" in str(refused.value) and "REDIS_URL" in str(refused.value)
        assert manager._publish.__func__ is socketio.RedisManager._publish  # nothing was wrapped
        return
    instrument.install(server, app)
    before = parse(app.test_client().get("/metrics").get_data(as_text=True))
    server.emit("lost", {"n": 1}, namespace="/")
    after = parse(app.test_client().get("/metrics").get_data(as_text=True))

    def delta(operation):
        metric = "socketio_message_queue_errors_total"
        return value(after, metric, operation=operation) - value(before, metric, operation=operation)

    assert delta("publish_lost") == 1
    if manager_class == "stock":  # python-socketio logs its first failed attempt at ERROR
        assert delta("publish_retry") == 1


def test_connected_clients_gauge_reads_engineio_sockets():
    class FakeSocket:
        def __init__(self, upgraded, closed=False, queued=0):
            self.upgraded, self.closed = upgraded, closed
            self.queue = queue.Queue()
            for i in range(queued):
                self.queue.put(i)

    class FakeServer:
        sockets = {
            "a": FakeSocket(False, queued=1),
            "b": FakeSocket(True),
            "c": FakeSocket(True, queued=5),
            "d": FakeSocket(True, closed=True, queued=9),
        }

    collector = metrics.ConnectedClients()
    collector.engineio_server = FakeServer()
    clients, queued, queued_max = collector.collect()
    assert {s.labels["transport"]: s.value for s in clients.samples} == {"polling": 1, "websocket": 2}
    assert queued.samples[0].value == 6 and queued_max.samples[0].value == 5  # open connections only


def test_lock_free_histogram_exposes_what_prometheus_client_would():
    """metrics.Latency is exposed by EventStats; prometheus_client's Histogram is the reference (a value equal
    to a bound falls in that bound's bucket)."""
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    observations = [0.0001, 0.0005, 0.0007, 0.001, 0.003, 0.25, 4.9, 5.0, 7.5, 0.0]
    registry = CollectorRegistry()
    reference = Histogram(
        "socketio_handler_seconds", "x", ["namespace", "event"], buckets=metrics.LATENCY_BUCKETS, registry=registry
    ).labels("/ref", "probe")
    ours = metrics.event_metrics("/ref", "probe")[1]
    for seconds in observations:
        reference.observe(seconds)
        ours.observe(seconds)
    expected = {k: v for k, v in parse(generate_latest(registry).decode()).items() if "_created" not in k[0]}
    exposed = {
        k: v
        for k, v in parse(generate_latest(metrics.REGISTRY).decode()).items()
        if k[0].startswith("socketio_handler_seconds") and dict(k[1]).get("namespace") == "/ref"
    }
    assert exposed == expected
    assert exposed[("socketio_handler_seconds_count", (("event", "probe"), ("namespace", "/ref")))] == 10


# --- a running native stack ------------------------------------------------------------------------------


def test_every_instance_serves_metrics_and_they_move(stack, clients):
    status = stack.status()
    by_name = {app["name"]: app["url"] for app in status["apps"]}
    for name, url in by_name.items():
        families = {}
        samples = scrape(url, families)
        assert {family: families.get(family) for family in INSTANCE_METRICS} == INSTANCE_METRICS, name
        assert value(samples, "socketio_instance_info", name=name) == 1

    client = clients(status["url"])  # through HAProxy; upgrades to websocket
    instance = client.call("whoami")
    url = by_name[instance]
    before = scrape(url)
    room = f"metrics-{uuid.uuid4().hex[:6]}"
    for i in range(5):
        assert client.call("echo", i) == i
    client.call("join", {"room": room})
    client.call("say", {"room": room, "message": "counted"})
    assert client.wait_for("message")
    after = scrape(url)

    def delta(metric, **labels):
        return value(after, metric, **labels) - value(before, metric, **labels)

    assert delta("socketio_events_received_total", namespace="/", event="echo") == 5
    assert delta("socketio_events_received_total", namespace="/", event="say") == 1
    assert delta("socketio_events_emitted_total", namespace="/", event="message") == 1
    assert delta("socketio_handler_seconds_count", namespace="/", event="echo") == 5
    assert value(after, "socketio_connected_clients", transport="websocket") >= 1


def test_handshake_failures_on_a_running_instance(own_stack):
    app = own_stack(replicas=1, REQUIRE_LOGIN="true").status()["apps"][0]
    before = scrape(app["url"])
    assert requests.get(app["url"] + "/socket.io/?EIO=4&transport=polling&sid=unknown", timeout=5).status_code == 400
    refused = socketio.Client(reconnection=False)
    with pytest.raises(socketio.exceptions.ConnectionError):  # not signed in: the login gate refuses it
        refused.connect(app["url"], wait_timeout=5)
    after = scrape(app["url"])
    assert value(after, "socketio_handshake_failures_total", reason="invalid_session") > value(
        before, "socketio_handshake_failures_total", reason="invalid_session"
    )
    assert (
        value(after, "socketio_handshake_failures_total", reason="refused")
        == value(before, "socketio_handshake_failures_total", reason="refused") + 1
    )


def test_metrics_are_not_served_on_the_public_port(stack):
    assert requests.get(stack.status()["url"] + "/metrics", timeout=5).status_code == 404


def test_haproxy_exporter_answers_on_the_stats_port(stack):
    response = requests.get(stack.status()["haproxy"]["metrics_url"], timeout=5)
    assert response.status_code == 200
    samples = parse(response.text)
    names = {name for name, _labels in samples}
    assert "haproxy_process_nbthread" in names
    assert any(name.startswith("haproxy_backend_") for name in names)
    servers = {dict(labels).get("server") for name, labels in samples if name.startswith("haproxy_server_")}
    assert {"app1", "app2", "app3"} <= servers


# --- Prometheus itself (Debian's `prometheus` package; skipped when it is not installed) ------------------


def test_prometheus_config_is_valid_and_metrics_pass_promtool(stack):
    import shutil
    import subprocess
    from pathlib import Path

    if not shutil.which("promtool"):
        pytest.skip("promtool not installed (apt-get install prometheus)")
    config = Path(__file__).resolve().parents[2] / "prometheus" / "prometheus.yml"
    subprocess.run(["promtool", "check", "config", str(config)], check=True, capture_output=True)
    text = requests.get(stack.status()["apps"][0]["url"] + "/metrics", timeout=5).text
    lint = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_real_prometheus_scrapes_every_instance_and_haproxy(stack, tmp_path):
    import shutil
    import subprocess
    import time
    from urllib.parse import urlparse

    from native_stack import free_port

    if not shutil.which("prometheus"):
        pytest.skip("prometheus not installed (apt-get install prometheus)")
    status = stack.status()
    apps = [urlparse(app["url"]).netloc for app in status["apps"]]
    haproxy = urlparse(status["haproxy"]["metrics_url"]).netloc
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - {{job_name: app, static_configs: [{{targets: {apps}}}]}}\n"
        f"  - {{job_name: haproxy, static_configs: [{{targets: ['{haproxy}']}}]}}\n"
    )
    port = free_port()
    proc = subprocess.Popen(
        ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        api = f"http://127.0.0.1:{port}/api/v1"
        deadline = time.monotonic() + 30
        while True:
            try:
                targets = requests.get(api + "/targets", timeout=2).json()["data"]["activeTargets"]
                health = {(t["labels"]["job"], t["labels"]["instance"]): t["health"] for t in targets}
                series = requests.get(api + "/query", params={"query": "socketio_instance_info"}, timeout=2).json()
                names = sorted(r["metric"]["name"] for r in series["data"]["result"])
                if len(health) == 4 and set(health.values()) == {"up"} and names == ["app1", "app2", "app3"]:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, "Prometheus did not scrape every target"
            time.sleep(0.5)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
