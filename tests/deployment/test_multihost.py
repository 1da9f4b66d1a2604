"""Across hosts: the stack spread over several network hosts on one machine, made of Linux network
namespaces that this test creates and removes (`ip netns`, veth pairs, one bridge).

    client (198.18.7.100) ─┐
    lb     (198.18.7.2)  ──┤ HAProxy, the repo's haproxy/haproxy.cfg, APPn_ADDR = the app hosts
    app1   (198.18.7.11) ──┤ gunicorn (wsgi.py, gunicorn.conf.py), INSTANCE_NAME=app1
    app2   (198.18.7.12) ──┼── br0 in its own namespace (the "switch")
    app3   (198.18.7.13) ──┤
    redis  (198.18.7.5)  ──┘ redis-server

Every address is inside these namespaces (198.18.0.0/15, the benchmarking range); nothing is added to
the machine's own network. The test checks stickiness and cross-host broadcast, then cuts app2's link
(its port on the switch goes down, the process keeps running) and checks that its clients move to the
other hosts while the others are untouched. The Socket.IO clients run on the client host, in a helper
process (`driver()` below) that the test drives over its stdin/stdout. Skipped where namespaces cannot
be made (not root, no iproute2, a container without CAP_SYS_ADMIN).
"""

from __future__ import annotations

import json
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

# the full tier (tests/conftest.py): this module starts processes of the stack
pytestmark = [pytest.mark.stack, pytest.mark.root]

ROOT = Path(__file__).resolve().parents[2]
PYTHON = ROOT / ".venv" / "bin" / "python" if (ROOT / ".venv" / "bin" / "python").exists() else Path(sys.executable)
GUNICORN = PYTHON.with_name("gunicorn")
HAPROXY_CFG = ROOT / "haproxy" / "haproxy.cfg"
NET = "198.18.7"
HOSTS = {
    "lb": f"{NET}.2",
    "redis": f"{NET}.5",
    "app1": f"{NET}.11",
    "app2": f"{NET}.12",
    "app3": f"{NET}.13",
    "client": f"{NET}.100",
}
APPS = ("app1", "app2", "app3")
APP_PORT = 8000
LB_URL = f"http://{HOSTS['lb']}:8080"


def run(*argv, check=True):
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=check)


def cannot_make_namespaces():
    """Why this machine cannot run the test, or None."""
    if not sys.platform.startswith("linux"):
        return "Linux network namespaces only exist on Linux"
    for tool in ("ip", "haproxy", "redis-server"):
        if not shutil.which(tool):
            return f"{tool} is not installed"
    if os.geteuid() != 0:
        return "creating network namespaces needs root (ip netns add)"
    probe = f"sioprobe{os.getpid()}"
    made = run("ip", "netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` failed here: {made.stderr.strip() or made.stdout.strip()}"
    run("ip", "netns", "del", probe, check=False)
    return None


class Network:
    """The namespaces, links and processes of one test run; close() removes all of them."""

    def __init__(self, workdir):
        self.prefix = f"sio{os.getpid()}x{secrets.token_hex(2)}"
        self.switch = f"{self.prefix}-sw"
        self.workdir = workdir
        self.namespaces = []
        self.processes = {}  # name -> Popen

    def ns(self, host):
        return f"{self.prefix}-{host}"

    def build(self):
        run("ip", "netns", "add", self.switch)
        self.namespaces.append(self.switch)
        run("ip", "-n", self.switch, "link", "add", "br0", "type", "bridge")
        run("ip", "-n", self.switch, "link", "set", "br0", "up")
        for host, address in HOSTS.items():
            ns = self.ns(host)
            run("ip", "netns", "add", ns)
            self.namespaces.append(ns)
            # one cable: eth0 on the host, v-<host> on the switch
            run(
                "ip",
                "link",
                "add",
                "eth0",
                "netns",
                ns,
                "type",
                "veth",
                "peer",
                "name",
                f"v-{host}",
                "netns",
                self.switch,
            )
            run("ip", "-n", self.switch, "link", "set", f"v-{host}", "master", "br0")
            run("ip", "-n", self.switch, "link", "set", f"v-{host}", "up")
            run("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
            run("ip", "-n", ns, "link", "set", "eth0", "up")
            run("ip", "-n", ns, "link", "set", "lo", "up")

    def cut(self, host):
        """Unplugs the host's cable at the switch: its processes keep running, unreachable."""
        run("ip", "-n", self.switch, "link", "set", f"v-{host}", "down")

    def spawn(self, name, host, argv, env, **popen):
        log = open(self.workdir / f"{name}.log", "ab")
        popen.setdefault("stdout", log)
        popen.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns(host), *argv],
            cwd=ROOT,
            env=env,
            stderr=log,
            start_new_session=True,
            **popen,
        )
        log.close()
        self.processes[name] = proc
        return proc

    def log(self, name):
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def close(self):
        for proc in reversed(list(self.processes.values())):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for proc in self.processes.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        for ns in reversed(self.namespaces):  # deleting a namespace deletes its end of each cable
            run("ip", "netns", "del", ns, check=False)


def server_states(socket_path):
    sys.path.insert(0, str(ROOT / "scripts"))
    from native_stack import haproxy_stats

    return {row["svname"]: row["status"] for row in haproxy_stats(socket_path) if row["pxname"] == "app"}


def wait_until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Driver:
    """The client host's helper process: one JSON command per line in, one JSON answer per line out."""

    def __init__(self, network):
        code = (
            f"import sys; sys.path[:0] = [{str(ROOT / 'tests' / 'deployment')!r}, {str(ROOT)!r}]; "
            "import test_multihost; test_multihost.driver()"
        )
        self.proc = network.spawn(
            "driver",
            "client",
            [str(PYTHON), "-u", "-c", code],
            dict(os.environ),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self.network = network

    def close(self):
        self.proc.stdin.write(b'{"command": "quit"}\n')
        self.proc.stdin.close()
        self.proc.wait(timeout=20)

    def __call__(self, command, **args):
        self.proc.stdin.write((json.dumps({"command": command, **args}) + "\n").encode())
        self.proc.stdin.flush()
        # every command ends within its own timeouts; a silent driver is a hung one, not a slow one
        if not select.select([self.proc.stdout], [], [], 90)[0]:
            raise AssertionError(f"the client driver did not answer {command!r}:\n{self.network.log('driver')}")
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"the client driver died:\n{self.network.log('driver')}")
        answer = json.loads(line)
        if "error" in answer:
            raise AssertionError(f"driver {command}: {answer['error']}")
        return answer["result"]


# --- the helper process on the client host -----------------------------------------------------------
def driver():
    """Runs inside the client namespace: keeps Socket.IO clients and answers the test's commands."""
    from conftest import Recorder
    from test_stack_e2e import polling_session_errors

    group = []

    def cookie_server(recorder):
        value = recorder.client.eio.http.cookies.get("io") if recorder.client.eio.http else None
        return value.split("~", 1)[0] if value else None

    def whoami(recorder, timeout=3):
        try:
            return recorder.call("whoami", timeout=timeout) if recorder.client.connected else None
        except Exception:  # noqa: BLE001 - reconnecting
            return None

    def connect(url, count):
        for transports in (["polling"], None) * (count // 2):
            group.append(Recorder(url, transports=transports).connect())
        return [whoami(c) for c in group]

    def sticky(rounds):
        report = []
        for client in group:
            first = whoami(client)
            echoes_ok = all(client.call("echo", {"n": n}) == {"n": n} for n in range(rounds))
            report.append(
                {
                    "first": first,
                    "last": whoami(client),
                    "echo": echoes_ok,
                    "cookie": cookie_server(client),
                    "transport": client.client.transport(),
                }
            )
        return report

    def broadcast(sender, timeout):
        token = uuid.uuid4().hex
        group[sender].call("broadcast", {"token": token})
        return [c.wait_for("broadcast", lambda data: data == {"token": token}, timeout=timeout) for c in group]

    def wait_live(live, timeout):
        deadline = time.monotonic() + timeout
        report = [None] * len(group)
        while time.monotonic() < deadline and not all(name in live for name in report):
            report = [name if name in live else whoami(c, timeout=1) for name, c in zip(report, group, strict=True)]
            time.sleep(0.2)
        return [
            {"whoami": name, "disconnects": c.disconnects, "echo": name in live and c.call("echo", "moved") == "moved"}
            for name, c in zip(report, group, strict=True)
        ]

    def reachable(address, port):
        import socket

        try:
            socket.create_connection((address, port), timeout=1).close()
            return True
        except OSError:
            return False

    commands = {
        "connect": connect,
        "sticky": sticky,
        "broadcast": broadcast,
        "wait_live": wait_live,
        "reachable": reachable,
        "polling_errors": lambda url: polling_session_errors(url),
    }
    for line in sys.stdin:
        request = json.loads(line)
        name = request.pop("command")
        if name == "quit":
            break
        try:
            answer = {"result": commands[name](**request)}
        except Exception as exc:  # noqa: BLE001 - reported to the test
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()
    for client in group:
        client.close()


# --- the test -------------------------------------------------------------------------------------------
@pytest.fixture
def network(tmp_path):
    reason = cannot_make_namespaces()
    if reason:
        pytest.skip(f"multi-host test skipped: {reason}")
    net = Network(tmp_path)
    try:
        net.build()
        yield net
    finally:
        net.close()


def start_stack(net, tmp_path):
    from scenarios_faults import stack_env

    env = stack_env(DRAIN_SECONDS="0.5", CLOSE_SPREAD_SECONDS="1", GRACEFUL_TIMEOUT="8", PYTHONUNBUFFERED="1")
    net.spawn(
        "redis",
        "redis",
        [
            "redis-server",
            "--bind",
            HOSTS["redis"],
            "--port",
            "6379",
            "--protected-mode",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        env,
    )
    for name in APPS:
        app_env = dict(
            env, INSTANCE_NAME=name, BIND=f"{HOSTS[name]}:{APP_PORT}", REDIS_URL=f"redis://{HOSTS['redis']}:6379/0"
        )
        net.spawn(name, name, [str(GUNICORN), "--config", str(ROOT / "gunicorn.conf.py")], app_env)
    socket_path = str(tmp_path / "haproxy.sock")
    lb_env = dict(
        env,
        HAPROXY_BIND=f"{HOSTS['lb']}:8080",
        HAPROXY_STATS_BIND="127.0.0.1:8404",
        HAPROXY_STATS_PASSWORD=secrets.token_urlsafe(12),
        HAPROXY_RUNTIME_SOCKET=socket_path,
        HAPROXY_MAXCONN="1000",
    )
    for index, name in enumerate(APPS, start=1):
        lb_env[f"APP{index}_ADDR"] = f"{HOSTS[name]}:{APP_PORT}"
    net.spawn("haproxy", "lb", ["haproxy", "-W", "-f", str(HAPROXY_CFG)], lb_env)

    def all_up():
        states = server_states(socket_path)
        return all(states.get(name, "").startswith("UP") for name in APPS)

    try:
        wait_until(all_up, 60, "HAProxy on the lb host to report app1-app3 UP")
    except AssertionError:
        raise AssertionError("\n".join(f"--- {n}\n{net.log(n)}" for n in ("haproxy", *APPS, "redis"))) from None
    return socket_path


def test_stack_across_hosts_sticky_broadcast_and_loss_of_one_host(network, tmp_path):
    socket_path = start_stack(network, tmp_path)
    drive = Driver(network)

    # spread over the three app hosts, 6 long-polling clients and 6 on WebSocket
    placement = drive("connect", url=LB_URL, count=12)
    assert set(placement) == set(APPS), placement

    # sticky: every client stays on its instance, and HAProxy's cookie names it
    report = drive("sticky", rounds=10)
    for entry, first in zip(report, placement, strict=True):
        assert entry["first"] == entry["last"] == first and entry["echo"], entry
        assert entry["cookie"] == first, entry
    assert {entry["transport"] for entry in report} == {"polling", "websocket"}
    assert drive("polling_errors", url=LB_URL) == []

    # cross-host broadcast: a client on app1's host reaches clients on every host, through Redis's host
    assert all(drive("broadcast", sender=placement.index("app1"), timeout=10))

    # the app2 host loses its link; the process itself keeps running
    assert drive("reachable", address=HOSTS["app2"], port=APP_PORT)
    network.cut("app2")
    cut_at = time.monotonic()
    wait_until(lambda: server_states(socket_path)["app2"].startswith("DOWN"), 20, "HAProxy to mark app2 DOWN")
    print(f"app2 marked DOWN {time.monotonic() - cut_at:.1f}s after its link was cut")
    assert not drive("reachable", address=HOSTS["app2"], port=APP_PORT)  # the cut is real
    assert network.processes["app2"].poll() is None

    after = drive("wait_live", live=["app1", "app3"], timeout=30)
    for entry, before in zip(after, placement, strict=True):
        assert entry["whoami"] in ("app1", "app3") and entry["echo"], entry
        if before == "app2":
            assert entry["disconnects"] >= 1, entry
        else:  # clients of the other hosts never noticed
            assert entry["whoami"] == before and entry["disconnects"] == 0, entry
    assert any(before == "app2" for before in placement)

    # broadcast still crosses hosts, sent from app3's host this time
    sender = next(i for i, entry in enumerate(after) if entry["whoami"] == "app3")
    assert all(drive("broadcast", sender=sender, timeout=10))
    drive.close()


def test_skip_reason_names_what_is_missing(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    if shutil.which("ip") and shutil.which("haproxy") and shutil.which("redis-server"):
        assert "needs root" in cannot_make_namespaces()
    monkeypatch.setattr(shutil, "which", lambda tool: None if tool == "ip" else "/usr/bin/" + tool)
    assert cannot_make_namespaces() == "ip is not installed"
