"""Scaling the native stack with one number: `Stack.scale(n)` / `scripts/stack scale N`.

New instances take the free slots (app4, app5 ... after app1-app3) and are switched on in HAProxy through
its runtime API; surplus instances are drained and stopped gracefully. HAProxy is not reloaded, so the
clients of the instances that stay keep their connections, and each live instance keeps its name, which
is also its cookie value.
"""

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from native_stack import MAX_REPLICAS, ROOT, Stack, StackError, free_port, haproxy_command
from ruamel.yaml import YAML

# the full tier (tests/conftest.py): this module starts processes of the stack
pytestmark = pytest.mark.stack

# a scaled-down instance drains for DRAIN_SECONDS, then closes its sockets over CLOSE_SPREAD_SECONDS
FAST_STOP = dict(DRAIN_SECONDS="0.5", CLOSE_SPREAD_SECONDS="1", GRACEFUL_TIMEOUT="8")


def io_cookie_server(recorder):
    """The server part of the io cookie HAProxy gave this client (`app4` from `app4~<sid>`)."""
    value = recorder.client.eio.http.cookies.get("io") if recorder.client.eio.http else None
    return value.split("~", 1)[0] if value else None


def wait_on_live_instance(client, live, timeout=25):
    """Waits until the client is connected to one of `live` and answers; returns the instance name."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if client.client.connected:
                name = client.call("whoami", timeout=2)
                if name in live:
                    return name
        except Exception:  # noqa: BLE001 - reconnecting: a call can time out or find no connection
            pass
        assert time.monotonic() < deadline, f"client not back on one of {sorted(live)}"
        time.sleep(0.2)


def broadcast_reaches_all(group):
    token = uuid.uuid4().hex
    assert group[-1].call("broadcast", {"token": token}) == {"ok": True}
    missing = [c for c in group if not c.wait_for("broadcast", lambda data: data == {"token": token})]
    assert not missing, f"{len(missing)} of {len(group)} clients missed the broadcast"


def test_scale_3_to_5_to_2_while_clients_stay_connected(own_stack, clients):
    stack = own_stack(**FAST_STOP)
    url = stack.status()["url"]
    first = [clients(url, transports=transports) for transports in (["polling"], None) * 6]
    placement = {id(c): c.call("whoami") for c in first}
    assert set(placement.values()) == {"app1", "app2", "app3"}

    # --- up to 5: two new instances, found by HAProxy without a reload ---------------------------------
    status = stack.scale(5)
    assert [app["name"] for app in status["apps"]] == ["app1", "app2", "app3", "app4", "app5"]
    assert all(app["alive"] for app in status["apps"])
    states = stack.server_states()
    assert all(states[f"app{n}"].startswith("UP") for n in range(1, 6)), states
    assert all(states[f"app{n}"] == "MAINT" for n in range(6, MAX_REPLICAS + 1)), states

    newcomers = [clients(url, transports=transports) for transports in (["polling"], None) * 5]
    new_placement = {id(c): c.call("whoami") for c in newcomers}
    # leastconn: the empty new instances get the newcomers first
    assert {"app4", "app5"} <= set(new_placement.values()), new_placement
    for client in newcomers:  # HAProxy's cookie value is the instance's own name
        assert io_cookie_server(client) == new_placement[id(client)]
    everyone = first + newcomers
    placement.update(new_placement)
    assert all(c.disconnects == 0 for c in everyone)
    broadcast_reaches_all(everyone)

    # --- down to 2: the highest-numbered instances are drained and stopped --------------------------
    stopped_pids = {app["name"]: app["pid"] for app in status["apps"]}
    status = stack.scale(2)
    live = {app["name"] for app in status["apps"]}
    assert live == {"app1", "app2"}
    states = stack.server_states()
    assert all(states[name] == "MAINT" for name in ("app3", "app4", "app5")), states
    for name in ("app3", "app4", "app5"):
        with pytest.raises(ProcessLookupError):
            os.kill(stopped_pids[name], 0)

    moved = [c for c in everyone if placement[id(c)] not in live]
    stayed = [c for c in everyone if placement[id(c)] in live]
    assert moved and stayed
    for client in moved:
        assert wait_on_live_instance(client, live) in live
        assert client.disconnects >= 1
        assert client.call("echo", "moved") == "moved"
    for client in stayed:  # no HAProxy reload: their connections were never touched
        assert client.disconnects == 0
        assert client.call("whoami") == placement[id(client)]
    assert {c.call("whoami") for c in everyone} <= live
    broadcast_reaches_all(everyone)


def cookie_names_match_instances(url, clients, count=6):
    """Connects fresh clients; returns [(io cookie server name, whoami)] for each."""
    group = [clients(url, transports=["polling"]) for _ in range(count)]
    return [(io_cookie_server(c), c.call("whoami")) for c in group]


def scale_with_a_gap_then_reload(stack, timeout=30):
    """4 instances, app2 dies, scale to 3: the dead one goes first, leaving app1, app3, app4; then HAProxy
    is reloaded, so it reads the server set from its environment again."""
    stack.scale(4)
    app2 = next(app for app in stack.status()["apps"] if app["name"] == "app2")
    os.killpg(app2["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while stack.status()["apps"][1]["alive"]:  # a zombie until reaped: status() must call it dead
        assert time.monotonic() < deadline, "the killed instance still counts as alive"
        time.sleep(0.05)
    assert [app["name"] for app in stack.scale(3)["apps"]] == ["app1", "app3", "app4"]
    stack.reload_haproxy(timeout=timeout)
    return {app["name"] for app in stack.status()["apps"]}


def test_scale_after_a_gap_keeps_names_and_cookies_through_a_reload(own_stack, clients):
    stack = own_stack(**FAST_STOP)
    live = scale_with_a_gap_then_reload(stack)
    assert live == {"app1", "app3", "app4"}
    state = stack.load()
    assert state["haproxy"]["previous_pids"], "reload_haproxy started no new HAProxy"
    states = stack.server_states()
    assert all(states[name].startswith("UP") for name in live), states
    assert states["app2"] == "MAINT", states
    pairs = cookie_names_match_instances(stack.status()["url"], clients)
    assert {whoami for _, whoami in pairs} <= live
    assert all(cookie == whoami for cookie, whoami in pairs), pairs

    # the command line: scripts/stack scale N on the same stack (STACK_DIR), back to 4 in the free slot
    env = dict(stack.env, STACK_DIR=str(stack.dir))
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "native_stack.py"), "scale", "4"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert '"name": "app2"' in done.stdout
    assert {app["name"] for app in stack.status()["apps"]} == {"app1", "app2", "app3", "app4"}
    usage = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "native_stack.py"), "scale", "many"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert usage.returncode == 2 and "usage: scripts/stack scale N" in usage.stderr


def test_control_servers_numbered_by_position_break_cookie_names(own_stack, clients, monkeypatch):
    """Control: mapping instances to slots by position (APP1_ADDR = first live instance, ...) instead of by
    name makes HAProxy's server app2 point at instance app3 after a gap, so cookie and instance disagree."""

    def by_position(self, state):
        env = original(self, state)
        for key in [k for k in env if k.startswith("APP") and k.endswith("_ADDR")]:
            del env[key]
        for index, app in enumerate(state["apps"], start=1):
            env[f"APP{index}_ADDR"] = f"127.0.0.1:{app['port']}"
        return env

    original = Stack.haproxy_env
    stack = own_stack(**FAST_STOP)
    monkeypatch.setattr(Stack, "haproxy_env", by_position)
    try:
        scale_with_a_gap_then_reload(stack, timeout=5)
    except StackError as exc:  # also wrong: slot app4 stays empty, so instance app4 is never UP
        assert "every app server UP" in str(exc)
    pairs = cookie_names_match_instances(stack.status()["url"], clients)
    assert any(cookie != whoami for cookie, whoami in pairs), pairs


def test_haproxy_env_names_slots_after_instances(tmp_path):
    stack = Stack(state_dir=tmp_path, env={"PATH": os.environ["PATH"]})
    state = {
        "port": 1,
        "apps": [{"name": "app1", "port": 5001}, {"name": "app4", "port": 5004}],
        "haproxy": {"stats_port": 2, "stats_password": "x", "socket": str(tmp_path / "s")},
    }
    env = stack.haproxy_env(state)
    assert env["APP1_ADDR"] == "127.0.0.1:5001" and env["APP4_ADDR"] == "127.0.0.1:5004"
    assert not {"APP2_ADDR", "APP3_ADDR"} & set(env)
    check = subprocess.run(
        ["haproxy", "-c", "-f", str(ROOT / "haproxy" / "haproxy.cfg")], env=env, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_scale_refuses_what_it_cannot_do(tmp_path):
    stack = Stack(state_dir=tmp_path, env={"SECRET_KEY": secrets.token_hex(32)})
    with pytest.raises(StackError, match="no stack is running"):
        stack.scale(2)
    stack.dir.mkdir(parents=True, exist_ok=True)
    stack.save({"apps": [], "redis": {}, "haproxy": {"pid": os.getpid()}})  # a "running" stack: this process
    with pytest.raises(StackError, match="slots for 1 to 8"):
        stack.scale(MAX_REPLICAS + 1)
    with pytest.raises(StackError, match="slots for 1 to 8"):
        stack.scale(0)


# --- Docker Swarm: deploy/swarm/docker-stack.yml, checked with Docker's own stack loader --------------------
STACK_FILE = ROOT / "deploy" / "swarm" / "docker-stack.yml"
HAPROXY_CFG = ROOT / "haproxy" / "haproxy.cfg"
needs_docker_cli = pytest.mark.skipif(not shutil.which("docker"), reason="the docker CLI is not installed")


def stack_config(**env):
    """`docker stack config`: the file as `docker stack deploy` reads it (schema, interpolation, paths);
    client-side only, no Docker engine needed."""
    run_env = {k: v for k, v in os.environ.items() if k not in ("APP_IMAGE", "APP_REPLICAS", "STACK_PORT")}
    run_env.update(env)
    return subprocess.run(
        ["docker", "stack", "config", "-c", str(STACK_FILE)], env=run_env, capture_output=True, text=True, timeout=60
    )


@needs_docker_cli
def test_swarm_stack_file_is_what_docker_stack_deploy_accepts():
    done = stack_config(APP_IMAGE="registry.example.com/realtime:1.0.0", APP_REPLICAS="5")
    assert done.returncode == 0, done.stderr
    config = YAML(typ="safe").load(done.stdout)
    app, haproxy = config["services"]["app"], config["services"]["haproxy"]
    assert app["image"] == "registry.example.com/realtime:1.0.0"
    deploy = app["deploy"]
    assert deploy["replicas"] == 5
    assert deploy["update_config"]["parallelism"] == 1 and deploy["update_config"]["order"] == "stop-first"
    assert deploy["restart_policy"]["condition"] == "any"
    assert "ports" not in app and "container_name" not in app  # replicas need neither
    # HAProxy resolves the tasks, not the service's virtual IP
    assert haproxy["environment"]["APP_DNS_NAME"] == "tasks.app"
    assert [(port["target"], port["mode"]) for port in haproxy["ports"]] == [(8080, "host")]
    assert haproxy["deploy"]["mode"] == "global" and haproxy["deploy"]["update_config"]["order"] == "stop-first"
    assert Path(config["configs"]["haproxy_cfg"]["file"]) == HAPROXY_CFG
    assert all(secret["external"] for secret in config["secrets"].values())
    assert {s["target"] for s in app["secrets"]} == {"secret_key", "redis_password"}
    assert app["environment"]["SECRET_KEY_FILE"] == "/run/secrets/secret_key"
    assert app["environment"]["REDIS_PASSWORD_FILE"] == "/run/secrets/redis_password"


@needs_docker_cli
def test_control_swarm_stack_without_an_image_is_refused():
    done = stack_config()
    assert done.returncode != 0 and "set APP_IMAGE" in done.stderr


def test_swarm_stack_keeps_the_compose_files_settings():
    """The stack file follows docker-compose.yml: same variables passed through, same health checks and stop
    times; what differs is Swarm's (image, secrets, configs, deploy, tasks.app)."""
    compose = YAML(typ="safe").load((ROOT / "docker-compose.yml").read_text())["services"]
    stack = YAML(typ="safe").load(STACK_FILE.read_text())["services"]
    for name in ("app", "haproxy", "redis"):
        assert set(stack[name]["environment"]) == set(compose[name]["environment"]), name
        assert stack[name].get("stop_grace_period") == compose[name].get("stop_grace_period"), name
    assert stack["app"]["healthcheck"] == compose["app"]["healthcheck"]
    for key in ("init", "read_only", "tmpfs", "ulimits"):
        assert stack["app"][key] == compose["app"][key], key


def test_haproxy_config_for_swarm_resolves_the_app_tasks(tmp_path):
    """haproxy.cfg with the stack's HAProxy environment: valid, and the server-template slots take their
    addresses from tasks.app through Docker's resolver."""
    stack = YAML(typ="safe").load(STACK_FILE.read_text())["services"]["haproxy"]
    env = {key: str(value) for key, value in stack["environment"].items() if value is not None}
    env = {key: value for key, value in env.items() if not value.startswith("${")}
    sock = tmp_path / "haproxy.sock"
    env.update(
        PATH=os.environ["PATH"],
        APP_MAX_REPLICAS="10",
        HAPROXY_MAXCONN="1000",
        HAPROXY_BIND=f"127.0.0.1:{free_port()}",
        HAPROXY_STATS_BIND=f"127.0.0.1:{free_port()}",
        HAPROXY_RUNTIME_SOCKET=str(sock),
    )
    check = subprocess.run(["haproxy", "-c", "-f", str(HAPROXY_CFG)], env=env, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    proc = subprocess.Popen(
        ["haproxy", "-f", str(HAPROXY_CFG)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 10
        while not sock.exists():
            assert time.monotonic() < deadline and proc.poll() is None, "HAProxy did not start"
            time.sleep(0.05)
        servers = haproxy_command(str(sock), "show servers state app").splitlines()[2:]
        fqdns = {line.split()[17] for line in servers if line.strip()}
        assert fqdns == {"tasks.app"}, servers
        assert len([line for line in servers if line.strip()]) == 10
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
