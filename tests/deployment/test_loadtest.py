"""scripts/loadtest.py run as users run it (a subprocess, JSON summary on stdout), through the template's
HAProxy (sticky on the app's `io` cookie) and through tests/deployment/haproxy-awsalb.cfg (sticky on a cookie that
HAProxy inserts itself, named and shaped like AWS ALB's AWSALB), with controls that drop cookies."""

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from http.cookies import SimpleCookie
from pathlib import Path
from types import SimpleNamespace

import loadtest
import pytest
import requests
import socketio
from native_stack import free_port

# the full tier (tests/conftest.py): this module starts processes of the stack
pytestmark = pytest.mark.stack

ROOT = Path(__file__).resolve().parents[2]
LOADTEST = ROOT / "scripts" / "loadtest.py"
AWSALB_CFG = ROOT / "tests" / "deployment" / "haproxy-awsalb.cfg"
INSTANCES = {"app1", "app2", "app3"}
# one line per request in the AWSALB HAProxy's log: method, URI, status, server, the AWSALB cookie sent
LOG_LINE = re.compile(r"^(?P<method>[A-Z]+) (?P<uri>\S+) (?P<status>-?\d+) (?P<server>\S+) awsalb=(?P<cookie>.*)$")


def run_loadtest(url, *args, duration=4, clients=20):
    argv = [
        sys.executable,
        str(LOADTEST),
        "--url",
        url,
        "--clients",
        str(clients),
        "--duration",
        str(duration),
        "--ramp-up",
        "1",
        "--timeout",
        "5",
        *args,
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60, cwd=ROOT)
    assert proc.stdout, proc.stderr
    summary = json.loads(proc.stdout)
    print(proc.stderr[-2000:])
    print(json.dumps(summary, indent=1))
    return proc.returncode, summary


def alb_cookie_values():
    """{AWSALB value: server name} as written in tests/deployment/haproxy-awsalb.cfg."""
    found = re.findall(r'^\s*server (app\d) "\$\{APP\d_ADDR\}" cookie "([^"]+)"', AWSALB_CFG.read_text(), re.M)
    return {value: name for name, value in found}


@pytest.fixture(scope="module")
def awsalb(make_stack, tmp_path_factory):
    """tests/deployment/haproxy-awsalb.cfg in front of a stack whose app sets no io cookie: AWSALB is the only
    stickiness."""
    stack = make_stack(IO_COOKIE="false")
    apps = stack.status()["apps"]
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not (k.startswith("APP") and k.endswith("_ADDR"))}
    env["HAPROXY_BIND"] = f"127.0.0.1:{port}"
    for index, app in enumerate(apps, start=1):
        env[f"APP{index}_ADDR"] = app["url"].removeprefix("http://")
    subprocess.run(["haproxy", "-c", "-q", "-f", str(AWSALB_CFG)], env=env, check=True, timeout=10)
    log_path = tmp_path_factory.mktemp("haproxy-awsalb") / "haproxy.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            ["haproxy", "-f", str(AWSALB_CFG)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 10
        while True:
            assert proc.poll() is None, log_path.read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "haproxy-awsalb.cfg did not start listening"
                time.sleep(0.05)
        yield SimpleNamespace(url=f"http://127.0.0.1:{port}", log=log_path)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


def log_lines(path, offset, expect=0, timeout=3):
    """The AWSALB HAProxy's parsed log lines written after `offset`, waiting a moment for `expect` of them."""
    deadline = time.monotonic() + timeout
    while True:
        with open(path, "rb") as log:
            log.seek(offset)
            text = log.read().decode(errors="replace")
        lines = [m.groupdict() for m in map(LOG_LINE.match, text.splitlines()) if m]
        if len(lines) >= expect or time.monotonic() > deadline:
            return lines
        time.sleep(0.1)


# --- the tool's own pieces ------------------------------------------------------------------------------
def test_cookie_header_for_websocket_upgrade_keeps_alb_values_as_set():
    value = "QUxCMQ/c3RpY2t5+YXBwMQ=="  # ALB's cookies are base64: / + =
    session = requests.Session()
    session.cookies.set("AWSALB", value, domain="127.0.0.1", path="/")
    session.cookies.set("io", "app1~Rcp-7WHOksYNGfxIAAAO", domain="127.0.0.1", path="/")
    header = loadtest.cookie_header(session, "ws://127.0.0.1:8080/socket.io/?transport=websocket&EIO=4")
    assert sorted(header.split("; ")) == [f"AWSALB={value}", "io=app1~Rcp-7WHOksYNGfxIAAAO"]
    # what python-engineio's own client would send on the upgrade (hence CookieKeepingEngineIOClient)
    jar = SimpleCookie()
    jar["AWSALB"] = value
    assert jar.output(header="").strip() == f'AWSALB="{value}"'


def test_histogram_percentiles_within_one_percent():
    histogram = loadtest.Histogram()
    for ms in range(1, 1001):
        histogram.add(float(ms))
    assert histogram.percentile(50) == pytest.approx(500, rel=0.011)
    assert histogram.percentile(99) == pytest.approx(990, rel=0.011)
    assert histogram.summary()["max"] == 1000
    assert loadtest.Histogram().summary() == {"p50": None, "p99": None, "max": None, "count": 0}


def test_refuses_more_clients_than_the_cap_with_a_clear_message():
    proc = subprocess.run(
        [sys.executable, str(LOADTEST), "--clients", "5001"], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 2
    assert "above the limit of 5000" in proc.stderr and not proc.stdout


# --- behind the template's HAProxy (io cookie, prefix mode) -----------------------------------------------
@pytest.mark.parametrize("transport", ["polling", "websocket"])
def test_echo_behind_template_haproxy(stack, transport):
    code, summary = run_loadtest(stack.status()["url"], "--scenario", "echo", "--transport", transport)
    assert code == 0
    assert (summary["connected"], summary["failed"], summary["errors"]) == (20, 0, {})
    assert set(summary["instances"]) == INSTANCES and sum(summary["instances"].values()) == 20
    assert summary["transports"] == {transport: 20}
    assert "io" in summary["cookies_seen"] and "io" in summary["cookies_kept"]
    assert summary["messages"] > 0 and summary["latency_ms"]["p50"] > 0
    assert summary["latency_ms"]["count"] == summary["messages"]


def test_broadcast_reaches_every_client_on_every_instance(stack):
    code, summary = run_loadtest(
        stack.status()["url"], "--scenario", "broadcast", "--senders", "2", "--rate", "2", clients=12
    )
    assert code == 0 and summary["errors"] == {}
    assert set(summary["instances"]) == INSTANCES
    broadcast = summary["broadcast"]
    assert broadcast["sent"] > 0
    assert broadcast["expected"] == broadcast["sent"] * 12  # every message to every client, senders included
    assert broadcast["delivered"] == broadcast["expected"] == summary["messages"]


# --- behind a load balancer that inserts its own cookie (AWSALB-style) -----------------------------------
@pytest.mark.parametrize("transport", ["polling", "websocket"])
def test_echo_behind_inserted_awsalb_cookie(awsalb, transport):
    offset = awsalb.log.stat().st_size
    code, summary = run_loadtest(awsalb.url, "--scenario", "echo", "--transport", transport)
    assert code == 0
    assert (summary["connected"], summary["failed"], summary["errors"]) == (20, 0, {})
    assert set(summary["instances"]) == INSTANCES
    assert summary["transports"] == {transport: 20}
    assert "AWSALB" in summary["cookies_kept"]
    assert "io" not in summary["cookies_seen"]  # IO_COOKIE=false: the inserted cookie did all the sticking
    if transport == "websocket":
        # every upgrade carried the AWSALB value HAProxy set, unaltered, and reached the server it names
        owners = alb_cookie_values()
        upgrades = [line for line in log_lines(awsalb.log, offset, expect=20) if "transport=websocket" in line["uri"]]
        assert len(upgrades) == 20
        for line in upgrades:
            assert line["status"] == "101" and owners.get(line["cookie"]) == line["server"], line


def test_control_clients_that_drop_cookies_fail_behind_inserted_awsalb_cookie(awsalb):
    code, summary = run_loadtest(awsalb.url, "--scenario", "echo", "--transport", "polling", "--drop-cookies")
    assert code == 1
    assert summary["failed"] > 0 or summary["errors"]
    assert any("Invalid session" in kind or "400" in kind or "timeout" in kind for kind in summary["errors"])
    assert "AWSALB" in summary["cookies_seen"] and summary["cookies_kept"] == []


def test_control_stock_python_client_quotes_alb_cookie_on_upgrade(awsalb):
    """Why loadtest sends the upgrade's Cookie header itself: python-engineio (4.15.1) re-serializes cookies
    with SimpleCookie, which puts ALB-style values in quotes, so HAProxy (and any exact-matching load balancer)
    sees an unknown value and balances the upgrade anew. If this starts failing, python-engineio has changed
    and CookieKeepingEngineIOClient may no longer be needed."""
    offset = awsalb.log.stat().st_size
    client = socketio.Client(reconnection=False, handle_sigint=False)
    # the upgrade lands on an instance that does not know the session: how the client fails varies (python-engineio
    # 4.15.1 may even raise "Invalid empty packet received" from connect and then fail in disconnect)
    with contextlib.suppress(Exception):
        client.connect(awsalb.url, wait_timeout=5)
    with contextlib.suppress(Exception):
        client.disconnect()
    lines = log_lines(awsalb.log, offset, expect=2)
    handshake = lines[0]
    upgrade = next(line for line in lines if "transport=websocket" in line["uri"])
    assert handshake["cookie"] == "-" and "transport=polling" in handshake["uri"]
    assert upgrade["cookie"].startswith('"') and upgrade["cookie"].strip('"') in alb_cookie_values()
    assert upgrade["server"] != handshake["server"]
