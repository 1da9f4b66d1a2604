"""The speedups that replace gevent's, gevent-websocket's, python-engineio's and python-socketio's internals
(connection_memory, websocket_writes, idle_websockets, pywsgi_speedups, event_greenlets) run only where they
can: each missing dependency is faked in turn (a speedup it REQUIRES left off, a Python version it was not
verified against, a setting that turns off what it builds on, an async_mode other than gevent) and the test
checks the one log line,
that the targets keep the library's own code, that the start log's list names exactly the speedups that run, and
that the app still serves. Each case builds the app in a fresh process: the replacements are process-wide."""

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MINE = ("event_greenlets", "pywsgi_speedups", "connection_memory", "websocket_writes", "idle_websockets")

# argv[1] = JSON {"python": {module: versions} or null, "interpreter": version or null}; prints one JSON line
PROBE = r"""
import importlib, json, logging, sys
options = json.loads(sys.argv[1])
from deployment.patches import pins
for name, versions in (options.get("python") or {}).items():  # a module pinned to a Python nobody runs
    module = importlib.import_module(f"deployment.patches.{name}")
    module.VERIFIED = {**module.VERIFIED, "python": tuple(versions)}
if options.get("interpreter"):  # or an interpreter none of them was verified on
    found = pins.installed_version
    pins.installed_version = lambda dist: options["interpreter"] if dist == "python" else found(dist)
lines = []
class Keep(logging.Handler):
    def emit(self, record):
        lines.append(record.getMessage())
logging.getLogger("patches").addHandler(Keep())
from stack_app import create_app, socketio
app = create_app()
from replacements import live_roots, origins

names = json.loads(sys.argv[2])
targets = {name: origins(importlib.import_module(f"deployment.patches.{name}").REPLACES, live_roots(app, socketio))
           for name in names}
client = socketio.test_client(app)
echo = client.emit("echo", {"n": 1}, callback=True)
client.disconnect()
print(json.dumps({"targets": targets, "log": lines, "echo": echo, "async_mode": socketio.server.async_mode,
                  "healthz": app.test_client().get("/healthz").status_code}))
"""


def probe(python=None, interpreter=None, **env):
    base = {k: v for k, v in os.environ.items() if k not in ("SPEEDUPS", "SPEEDUPS_SKIP", "REDIS_URL")}
    result = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps({"python": python, "interpreter": interpreter}), json.dumps(MINE)],
        cwd=ROOT,
        env={
            **base,
            "APP_ENV": "development",
            "LOG_LEVEL": "info",
            "PYTHONPATH": f"{ROOT}:{ROOT / 'tests' / 'deployment'}",
            **env,
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def module(name):
    return importlib.import_module(f"deployment.patches.{name}")


def listed_on(result):
    [line] = [line for line in result["log"] if line.startswith("speedups on: ")]
    return set(line[len("speedups on: ") :].split(", ")) - {"none"}


def runs(result, name):
    """Every target holds a speedup's value, and at least one this one's (idle_websockets replaces
    connection_memory's run_websocket)."""
    values = result["targets"][name].values()
    return all(v.startswith("deployment.patches.") for v in values) and f"deployment.patches.{name}" in values


def stays_off(result, name):
    return all(v != f"deployment.patches.{name}" for v in result["targets"][name].values())


def off_lines(result):
    return [line for line in result["log"] if "stays off" in line]


def check(result, off, skipped=()):
    """`off` (name -> the start of its one line) stay off, each with its one line and none of its targets; those
    `skipped` (SPEEDUPS_SKIP) too, without a line; the others of MINE run; the start log lists exactly those that
    run; the app serves."""
    assert sorted(line.split(" stays off")[0].split(" ")[-1] for line in off_lines(result)) == sorted(off), result
    for name, start in off.items():
        [line] = [line for line in off_lines(result) if line.split(" stays off")[0].endswith(f" {name}")]
        assert start in line, (name, line)
        assert stays_off(result, name), (name, result["targets"][name])
    for name in skipped:
        assert stays_off(result, name), (name, result["targets"][name])
    running = {name for name in MINE if runs(result, name)}
    assert running == set(MINE) - set(off) - set(skipped), result["targets"]
    assert listed_on(result) & set(MINE) == running, (listed_on(result), running)
    assert result["echo"] == {"n": 1} and result["healthz"] == 200


def test_control_all_of_them_run():
    result = probe()
    assert result["async_mode"] == "gevent"
    check(result, {})


def dependents(name):
    """The speedups of MINE that cannot run without `name`: REQUIRES, followed through."""
    found, changed = {name}, True
    while changed:
        changed = False
        for other in MINE:
            if other not in found and found & set(getattr(module(other), "REQUIRES", ())):
                found.add(other)
                changed = True
    return found - {name}


REQUIRED = sorted({needed for name in MINE for needed in getattr(module(name), "REQUIRES", ())})


@pytest.mark.parametrize("needed", REQUIRED)
def test_without_a_speedup_it_requires_a_speedup_stays_off_with_one_line(needed):
    """SPEEDUPS_SKIP=<what it needs>: e.g. idle_websockets without websocket_writes' writer on demand, which it
    parks WebSockets on: it would never run while the log listed it as on."""
    result = probe(SPEEDUPS_SKIP=needed)
    off = {name: f"speedup {name} stays off: it needs " for name in dependents(needed)}
    check(result, off, skipped=[needed])
    for name in off:
        [line] = [line for line in off_lines(result) if line.startswith(f"speedup {name} ")]
        assert needed in line or any(n in line for n in dependents(needed)), line


def test_idle_websockets_declares_what_it_needs():
    assert {"connection_memory", "websocket_writes"} <= set(module("idle_websockets").REQUIRES)


PINNED_TO_PYTHON = [name for name in MINE if "python" in module(name).VERIFIED]


def test_what_relies_on_cpython_internals_pins_python():
    """connection_memory and idle_websockets read through io.BufferedReader and socket.SocketIO internals,
    pywsgi_speedups parses with the email package's, event_greenlets' gain is CPython 3.11's frame stack per
    greenlet; websocket_writes relies on the libraries only (its VERIFIED)."""
    assert set(PINNED_TO_PYTHON) == {"pywsgi_speedups", "connection_memory", "idle_websockets", "event_greenlets"}
    assert all(module(name).VERIFIED["python"] == ("3.11",) for name in PINNED_TO_PYTHON)


@pytest.mark.parametrize("name", PINNED_TO_PYTHON)
def test_a_python_version_it_was_not_verified_on_keeps_it_off(name):
    result = probe(python={name: ["3.0"]})
    off = {name: f"patch {name} stays off: python 3.11 is not a version it was verified against"}
    off.update({other: f"speedup {other} stays off: it needs {name}" for other in dependents(name)})
    check(result, off)


def test_on_another_interpreter_every_module_pinned_to_python_stays_off():
    result = probe(interpreter="3.99")
    off = {name: "python 3.99 is not a version it was verified against" for name in PINNED_TO_PYTHON}
    for name in PINNED_TO_PYTHON:  # those that need one of them say so instead (REQUIRES is checked first)
        for other in dependents(name):
            off[other] = f"speedup {other} stays off: it needs "
    check(result, off)


def test_websocket_direct_send_false_turns_websocket_writes_off_and_says_so():
    result = probe(WEBSOCKET_DIRECT_SEND="false")
    check(
        result,
        {
            "websocket_writes": "speedup websocket_writes stays off: WEBSOCKET_DIRECT_SEND=false",
            "idle_websockets": "speedup idle_websockets stays off: it needs websocket_writes",
        },
    )


def test_websocket_writer_on_demand_false_turns_idle_websockets_off_and_says_so():
    result = probe(WEBSOCKET_WRITER_ON_DEMAND="false")
    check(result, {"idle_websockets": "speedup idle_websockets stays off: WEBSOCKET_WRITER_ON_DEMAND=false"})


def test_under_flask_run_s_threading_the_gevent_speedups_stay_off():
    """`flask run` serves with werkzeug's threads (python-engineio's async_mode threading): no pywsgi, no
    gevent-websocket, so none of them would run while the log listed them."""
    result = probe(FLASK_RUN_FROM_CLI="true")
    assert result["async_mode"] == "threading"
    off = {}
    for name in MINE:
        needed = set(getattr(module(name), "REQUIRES", ())) & set(MINE)
        off[name] = f"speedup {name} stays off: it needs " if needed else "async_mode is threading"
    check(result, off)
