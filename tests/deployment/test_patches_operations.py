"""The patches the operations layer installs (engineio_packets, socketio_hooks, gunicorn_servers) stay off with a
library version they were not verified against: one log line names the patch and the version found, every target
in REPLACES keeps the library's own value, and the app still serves. connection_recovery serves a setting that
asks for it (CONNECTION_STATE_RECOVERY): with such a version the start stops with one line instead. Each case
runs in a fresh process, since these replacements are process-wide; a positive control shows that, pins
matching, the targets hold the patches' values."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Common to every case: argv[1] is "mismatch" or "match"; the case's code sets `result` (printed as JSON).
PRELUDE = r"""
import importlib
import json
import logging
import sys

from deployment.patches import pins
from deployment.patches import {module} as patch

MISMATCH = sys.argv[1] == "mismatch"
lines = []


class Collect(logging.Handler):
    def emit(self, record):
        lines.append(record.getMessage())


logging.getLogger("patches").addHandler(Collect())
if MISMATCH:  # versions nobody has installed: the installed ones are now unverified
    patch.VERIFIED = {{dist: ("0.0.0.dev0",) for dist in patch.VERIFIED}}


def resolve_dotted(target):
    parts = target.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            value = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            value = getattr(value, name)
        return value
    raise ImportError(target)


def describe(value, owner=None, name=None):
    if value is None:
        return {{"present": False}}
    func = getattr(value, "__func__", value)
    return {{
        "present": True,
        "module": getattr(func, "__module__", None) or "",
        # a live object's attribute: the library's own is its class's, not one set on the instance
        "instance_override": owner is not None and name in vars(owner),
    }}


def live_targets(roots):
    found = {{}}
    for target in patch.REPLACES:
        root, _, name = target.partition(".")
        if root in roots:
            obj = roots[root]
            found[target] = describe(getattr(obj, name, None), obj, name)
    return found


DOTTED_BEFORE = {{t: resolve_dotted(t) for t in patch.REPLACES if t.split(".")[0] not in
                 ("app", "socketio", "server", "eio", "manager")}}

from stack_app import create_app, socketio  # noqa: E402



def patch_lines():
    return [line for line in lines if "patch {module} " in line]


app = create_app()
result = {{"lines": patch_lines()}}
server = socketio.server
roots = {{"app": app, "socketio": socketio, "server": server, "eio": server.eio, "manager": server.manager}}
result["targets"] = live_targets(roots)
for target, before in DOTTED_BEFORE.items():
    now = resolve_dotted(target)
    result["targets"][target] = {{**describe(now), "same_as_before": now is before}}

client = socketio.test_client(app)
result["connected"] = client.is_connected()
result["echo"] = client.emit("echo", {{"n": 1}}, callback=True)
client.disconnect()
http = app.test_client()
result["healthz"] = http.get("/healthz").status_code
metrics_response = http.get("/metrics")
result["metrics_status"] = metrics_response.status_code
result["metrics"] = metrics_response.get_data(as_text=True)
"""

CASES = {
    # an Engine.IO packet that is not one, over polling: the patch closes that session (the next POST gets
    # 400); python-engineio's own decode raises, logs a traceback and leaves the session open (200)
    "engineio_packets": r"""
sid = json.loads(http.get("/socket.io/?EIO=4&transport=polling").get_data(as_text=True)[1:])["sid"]
url = f"/socket.io/?EIO=4&transport=polling&sid={sid}"
result["garbage_post"] = http.post(url, data="x").status_code
result["next_post"] = http.post(url, data="40").status_code
""",
    # the hook needs a pub/sub manager of python-socketio's own: a second server with a RedisManager (its Redis
    # is a closed port; nothing is published here). instrument refuses it when the hook cannot run.
    "socketio_hooks": r"""
import socket

import socketio as python_socketio
from flask import Flask
from flask_socketio import SocketIO

from deployment.settings import ConfigError, Settings
from deployment.operations import instrument

with socket.socket() as probe:
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
private = Flask("private")
private.config["SETTINGS"] = Settings.from_env({"APP_ENV": "development", "INSTANCE_NAME": "private"})
queued = SocketIO(private, client_manager=python_socketio.RedisManager(f"redis://127.0.0.1:{port}/0"))
try:
    instrument.install(queued, private)
    result["refused"] = None
except ConfigError as exc:
    result["refused"] = str(exc)
result["lines"] = patch_lines()
result["queue_targets"] = live_targets({"manager": queued.server.manager})
""",
    # a server with CONNECTION_STATE_RECOVERY=true as create_app() makes it (its Redis is a closed port)
    "connection_recovery": r"""
import socket

from flask import Flask
from flask_socketio import SocketIO

from deployment.settings import ConfigError, Settings
from deployment.operations import message_queue, recovery

with socket.socket() as probe:
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
url = f"redis://127.0.0.1:{port}/0"
settings = Settings.from_env(
    {"APP_ENV": "development", "INSTANCE_NAME": "private", "REDIS_URL": url, "CONNECTION_STATE_RECOVERY": "true"}
)
try:
    manager = message_queue.queue_manager(url, channel="flask-socketio", recovery_window=120)
except ConfigError as exc:  # a version it was not verified against: the start stops with this line
    result["refused"] = str(exc)
else:
    private = Flask("private")
    private.config["SETTINGS"] = settings
    recovering = SocketIO(private, client_manager=manager)
    result["installed"] = recovery.install(recovering, settings)
    result["manager_class"] = f"{type(manager).__module__}.{type(manager).__qualname__}"
    result["queue_targets"] = live_targets({"server": recovering.server, "manager": manager})
result["lines"] = patch_lines()
""",
    # lifecycle.install as gunicorn.conf.py's post_worker_init calls it, for the plain gevent worker
    "gunicorn_servers": r"""
from gunicorn.workers import ggevent

from deployment.operations import lifecycle


class Config:
    graceful_timeout = 20


class Worker:
    server_class = None  # gunicorn's plain gevent worker
    cfg = Config()
    wsgi = app


lifecycle.install(Worker())
result["lines"] = patch_lines()
result["targets"]["gunicorn.workers.ggevent.StreamServer"] = {
    **describe(ggevent.StreamServer),
    "same_as_before": ggevent.StreamServer is DOTTED_BEFORE["gunicorn.workers.ggevent.StreamServer"],
}
made = ggevent.StreamServer(("127.0.0.1", 0), handle=lambda *args: None)  # not started: binds nothing
result["recorded"] = any(made in getattr(listener, "__self__", ()) for listener in patch.listeners)
""",
}


def run_case(module, mode):
    code = PRELUDE.format(module=module) + CASES[module] + "\nprint('RESULT ' + json.dumps(result))\n"
    env = {
        **os.environ,
        "APP_ENV": "development",
        "LOG_LEVEL": "warning",
        "PYTHONPATH": f"{ROOT}:{ROOT / 'tests' / 'deployment'}",
    }
    for name in ("REDIS_URL", "SPEEDUPS", "SPEEDUPS_SKIP"):
        env.pop(name, None)
    done = subprocess.run(
        [sys.executable, "-c", code, mode], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    last = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert last, done.stdout[-2000:] + done.stderr[-2000:]
    return json.loads(last[-1][len("RESULT ") :]), done.stderr


def module(name):
    return __import__(f"deployment.patches.{name}", fromlist=[name])


def assert_serves(result):
    assert result["connected"] and result["echo"] == {"n": 1}, result
    assert result["healthz"] == 200 and result["metrics_status"] == 200, result


def assert_library_values(targets, patch=""):
    """Not replaced by patches.<patch> (by default: by no module of deployment/patches/)."""
    for target, value in targets.items():
        if not value["present"]:  # e.g. manager._publish on the in-process manager: nothing to replace
            continue
        assert not value["module"].startswith(f"deployment.patches.{patch}"), (target, value)
        assert not value.get("instance_override"), (target, value)
        assert value.get("same_as_before", True), (target, value)


def assert_patch_values(targets):
    for target, value in targets.items():
        if value["present"]:
            assert value["module"].startswith("deployment.patches."), (target, value)


def assert_one_line_naming_the_versions_found(name, result):
    from deployment.patches import pins

    assert len(result["lines"]) == 1, result["lines"]
    line = result["lines"][0]
    assert line.startswith(f"patch {name} stays off"), line
    for dist in module(name).VERIFIED:
        assert f"{dist} {pins.installed_version(dist)}" in line, line


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_target_of_the_module_is_covered(name):
    result, _ = run_case(name, "match")
    covered = set(result["targets"]) | set(result.get("queue_targets", {}))
    assert covered == set(module(name).REPLACES)


def test_engineio_packets_with_an_unverified_engineio_leaves_decode_alone_and_serves():
    result, stderr = run_case("engineio_packets", "mismatch")
    assert_one_line_naming_the_versions_found("engineio_packets", result)
    assert_library_values(result["targets"])
    assert result["targets"]["engineio.packet.Packet.decode"]["module"] == "engineio.packet"
    assert_serves(result)
    # python-engineio's own reaction to garbage: a traceback, the session stays open
    assert (result["garbage_post"], result["next_post"]) == (200, 200)
    assert "post request handler error" in stderr


def test_engineio_packets_control_replaces_decode():
    result, _ = run_case("engineio_packets", "match")
    assert result["lines"] == []
    assert result["targets"]["engineio.packet.Packet.decode"]["module"] == "deployment.patches.engineio_packets"
    assert_serves(result)
    assert (result["garbage_post"], result["next_post"]) == (200, 400)  # the garbage closed that session


def echoes_counted(metrics_text):
    from prometheus_client.parser import text_string_to_metric_families

    return sum(
        sample.value
        for family in text_string_to_metric_families(metrics_text)
        for sample in family.samples
        if sample.name == "socketio_events_received_total" and sample.labels.get("event") == "echo"
    )


def test_socketio_hooks_with_an_unverified_socketio_hooks_nothing_and_refuses_what_needs_it():
    """The app's own metrics need no hook (public doors): the echo is counted. A server whose manager is one of
    python-socketio's own would need it: instrument refuses it, one line naming the version and the way out."""
    result, _ = run_case("socketio_hooks", "mismatch")
    assert_library_values(result["targets"])
    assert_library_values(result["queue_targets"])
    assert all(value["present"] for value in result["queue_targets"].values()), result["queue_targets"]
    refused = result["refused"]
    assert refused and "\n" not in refused, refused
    assert "python-socketio" in refused and "is not a version deployment/patches/socketio_hooks.py" in refused
    assert "install python-socketio 0.0.0.dev0" in refused and "REDIS_URL" in refused
    assert result["lines"] == [], result["lines"]  # refused before the hook was tried: the refusal is the line
    assert_serves(result)
    assert echoes_counted(result["metrics"]) == 1  # public doors: counted whatever the version


def test_socketio_hooks_control_hooks_every_target():
    result, _ = run_case("socketio_hooks", "match")
    assert result["lines"] == [] and result["refused"] is None
    assert all(value["module"] == "deployment.patches.socketio_hooks" for value in result["queue_targets"].values()), (
        result
    )
    assert_library_values(result["targets"])  # the app's own server: nothing of the libraries replaced
    assert_serves(result)
    assert echoes_counted(result["metrics"]) == 1


def test_gunicorn_servers_with_an_unverified_gunicorn_leaves_streamserver_alone():
    result, _ = run_case("gunicorn_servers", "mismatch")
    assert_one_line_naming_the_versions_found("gunicorn_servers", result)
    target = result["targets"]["gunicorn.workers.ggevent.StreamServer"]
    assert target["module"] == "gevent.server" and target["same_as_before"], target
    assert_library_values(result["targets"])
    assert not result["recorded"]
    assert_serves(result)


def test_gunicorn_servers_control_records_the_servers():
    result, _ = run_case("gunicorn_servers", "match")
    assert result["lines"] == []
    target = result["targets"]["gunicorn.workers.ggevent.StreamServer"]
    assert target["module"] == "deployment.patches.gunicorn_servers" and not target["same_as_before"], target
    assert result["recorded"]  # lifecycle's list of servers got the one made


def test_connection_recovery_with_an_unverified_socketio_refuses_the_start_with_one_line():
    from deployment.patches import pins

    result, _ = run_case("connection_recovery", "mismatch")
    refused = result["refused"]
    assert refused.startswith("CONNECTION_STATE_RECOVERY=true") and "\n" not in refused, refused
    for dist in module("connection_recovery").VERIFIED:
        assert f"{dist} {pins.installed_version(dist)}" in refused, refused
    assert "CONNECTION_STATE_RECOVERY=false" in refused, refused
    assert result["lines"] == []  # not a "stays off" line: the setting asked for it
    assert_library_values(result["targets"])  # the app made without the setting: python-socketio's own
    assert_serves(result)


def test_connection_recovery_control_replaces_every_target():
    result, _ = run_case("connection_recovery", "match")
    assert "refused" not in result and result["lines"] == []
    assert result["manager_class"] == "deployment.operations.recovery.RecoveryManager"
    assert result["installed"] is True
    assert all(
        value["module"] == "deployment.patches.connection_recovery" for value in result["queue_targets"].values()
    ), result
    assert_serves(result)
