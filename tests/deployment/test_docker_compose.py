"""docker-compose.yml for real: built and started on a real Docker engine (with local stand-in images, see
scripts/standin-images), then driven only through the port HAProxy publishes, by Node socket.io-client clients
(withCredentials: true) and python-socketio clients; scaled, killed, restarted, taken down.

The tests of this module share one compose project (started by the `compose` fixture) and run in file order."""

import json
import re
import subprocess
import time
from pathlib import Path

import pytest
from docker_stack import ComposeStack, Fleet, docker, instances_of, nofile_limit

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "rtcompose"
NOFILE_LIMIT = 20000  # the open-file limit of dockerd on these machines: the stack must start with it


def fleet(stack, clients=30, duration=6, **options):
    run = Fleet(stack.url, clients, duration, **options)
    return run.ready, run.result()


@pytest.fixture(scope="module")
def compose(docker_images):
    """The repo's compose project, from a clean state: `down -v`, then `up --build` with NOFILE_LIMIT=20000."""
    env = {**docker_images, "NOFILE_LIMIT": nofile_limit(docker_images, NOFILE_LIMIT)}
    stack = ComposeStack(PROJECT, env)
    stack.down("-v")
    started = time.monotonic()
    stack.up("--build")
    stack.up_seconds = time.monotonic() - started
    yield stack
    stack.down("-v")


def test_polling_handshake_sets_the_prefixed_io_cookie(compose):
    status, headers, body = compose.get("/socket.io/?EIO=4&transport=polling")
    sid = json.loads(body.decode()[1:])["sid"]
    # the default: test_docker_settings.py's project, with PING_INTERVAL=7 in its .env, sends 7000
    assert json.loads(body.decode()[1:])["pingInterval"] == 25000
    cookies = headers.get_all("Set-Cookie")
    cookie = next((c for c in cookies if c.startswith("io=")), None)
    assert cookie, cookies
    server, _, cookie_sid = cookie.split(";")[0][3:].partition("~")
    assert re.fullmatch(r"[0-9a-f]{16}", server), f"HAProxy's dynamic server cookie, then ~: {cookie}"
    assert cookie_sid == sid


def test_node_clients_spread_over_every_replica_upgrade_and_stay(compose):
    ready, clients = fleet(compose, clients=30, duration=6)
    assert ready == 30
    replicas = set(compose.hostnames().values())
    assert len(replicas) == 3
    assert {instances_of(c)[0] for c in clients} == replicas, "leastconn spreads new clients over every replica"
    for client in clients:
        assert len(client["runs"]) == 1, f"one instance and one sid for the whole run: {client['runs']}"
        assert client["transportAtEnd"] == "websocket" and client["runs"][0]["count"] >= 10
        assert client["disconnects"] == [] and client["errors"] == {} and client["ackFailures"] == 0


def test_broadcast_and_room_messages_cross_replicas(compose, clients):
    members = [clients(compose.url) for _ in range(6)]
    assert len({m.call("whoami") for m in members}) >= 2, "members on several replicas"
    for member in members:
        assert member.call("join", {"room": "docker-room"})["ok"]
    assert members[0].call("say", {"room": "docker-room", "message": "across replicas"})["ok"]
    assert members[-1].call("broadcast", {"text": "to everybody"})["ok"]
    for member in members:
        assert member.wait_for("message", lambda data: data["message"] == "across replicas")
        assert member.wait_for("broadcast", lambda data: data == {"text": "to everybody"})


def haproxy_started_at(stack):
    [haproxy] = stack.containers("haproxy")
    return haproxy, stack.inspect(haproxy)[0]["State"]["StartedAt"]


def test_scale_up_to_five_and_back_without_restarting_haproxy(compose):
    before = haproxy_started_at(compose)
    compose.compose("up", "-d", "--no-recreate", "--scale", "app=5")
    compose.wait_until_serving(replicas=5)
    assert haproxy_started_at(compose) == before, "HAProxy found the new replicas through Docker's DNS"
    ready, clients = fleet(compose, clients=40, duration=4)
    assert ready == 40
    assert {instances_of(c)[0] for c in clients} == set(compose.hostnames().values())
    assert len(set(compose.hostnames().values())) == 5
    # APP_REPLICAS=5 is what a later `up -d` keeps (deploy.replicas); without it, `up -d` goes back to 3
    compose.up(env={"APP_REPLICAS": "5"})
    assert len(compose.containers("app")) == 5

    # back to 3 while clients are connected: those of the 2 removed replicas move to the 3 kept ones
    run = Fleet(compose.url, 40, 45)
    assert run.ready == 40
    kept = set(list(compose.hostnames().values())[:3])
    compose.compose("up", "-d")
    clients = run.result()
    assert set(compose.hostnames().values()) == kept
    compose.wait_until_serving(replicas=3)
    assert haproxy_started_at(compose) == before
    moved = [c for c in clients if instances_of(c)[0] not in kept]
    assert moved, "some clients were on the removed replicas"
    for client in clients:
        assert client["connectedAtEnd"] and instances_of(client)[-1] in kept
        if client not in moved:
            assert client["disconnects"] == [] and len(client["runs"]) == 1, "clients of kept replicas saw nothing"


def test_haproxy_reload_keeps_every_client(compose):
    """`docker compose kill -s HUP haproxy` (docs/docker.md#reloading-haproxy): a new HAProxy process takes the
    listeners, the old one keeps the open WebSockets. Control: a restart of HAProxy's container drops them."""
    before = haproxy_started_at(compose)
    run = Fleet(compose.url, 20, 10)
    assert run.ready == 20
    compose.compose("kill", "-s", "HUP", "haproxy")
    clients = run.result()
    assert haproxy_started_at(compose) == before
    for client in clients:
        assert client["disconnects"] == [] and len(client["runs"]) == 1 and client["ackFailures"] == 0

    run = Fleet(compose.url, 20, 10)
    assert run.ready == 20
    compose.compose("restart", "-t", "2", "haproxy")
    clients = run.result()
    assert all(client["disconnects"] for client in clients), "control: a restart cuts every connection"
    compose.wait_until_serving(replicas=3)


@pytest.mark.parametrize("action", ["kill", "restart"])
def test_a_replica_killed_or_restarted_under_load(compose, action):
    run = Fleet(compose.url, 30, 25)
    assert run.ready == 30
    victim = compose.containers("app")[0]
    victim_name = compose.hostnames()[victim]
    hit = time.time()
    docker(action, *(["-t", "5"] if action == "restart" else []), victim)
    clients = run.result()
    on_victim = [c for c in clients if instances_of(c)[0] == victim_name]
    assert on_victim, "some clients were on the replica"
    gaps = []
    for client in clients:
        assert client["connectedAtEnd"], client
        if client in on_victim:
            assert client["disconnects"], "its clients lost their connection"
            back = [t for t in client["connects"] if t > hit]
            assert back and client["runs"][-1]["count"] >= 3, f"and were served again: {client['runs']}"
            gaps.append(back[0] - client["disconnects"][0][0])
        else:
            assert client["disconnects"] == [] and client["ackFailures"] == 0, "the others saw nothing"
    print(f"docker {action}: {len(on_victim)} clients back after {max(gaps) / 1000:.1f} s at most")
    compose.up()  # a killed replica stays down (a manual kill): bring the project back to 3
    compose.wait_until_serving(replicas=3)


def test_app_runs_as_uid_10001_on_a_read_only_root(compose):
    app = compose.containers("app")[0]
    config = compose.inspect(app)[0]
    assert config["Config"]["User"] == "10001:10001"
    assert config["HostConfig"]["ReadonlyRootfs"] is True
    assert docker("exec", app, "id", "-u").stdout.strip() == "10001"
    write = docker("exec", app, "sh", "-c", "echo x > /app/new-file", check=False)
    assert write.returncode != 0 and "Read-only file system" in write.stderr
    assert docker("exec", app, "sh", "-c", "echo x > /tmp/scratch").returncode == 0, "/tmp is a tmpfs"


def test_open_file_limit_and_haproxy_maxconn_follow_nofile_limit(compose):
    limit = int(compose.env["NOFILE_LIMIT"])
    for service in ("app", "haproxy"):
        container = compose.containers(service)[0]
        assert int(docker("exec", container, "sh", "-c", "ulimit -n").stdout) == limit
    maxconn = int(re.search(r"^haproxy_process_max_connections (\d+)", compose.haproxy_metrics(), re.M).group(1))
    assert limit // 2 - 100 <= maxconn < limit // 2, "about half: two file descriptors per connection"


def test_haproxy_says_what_to_change_when_maxconn_cannot_fit(compose):
    limit = int(compose.env["NOFILE_LIMIT"])
    result = compose.compose(
        "run", "--rm", "--no-deps", "-T", "-e", f"HAPROXY_MAXCONN={limit}", "haproxy", check=False, timeout=120
    )
    assert result.returncode != 0
    assert f"HAPROXY_MAXCONN={limit} needs" in result.stderr + result.stdout
    assert "NOFILE_LIMIT" in result.stderr + result.stdout


def test_haproxy_reports_unhealthy_when_it_does_not_serve(compose):
    """The healthcheck is HAProxy's own: stop its stats listener's process and Docker says unhealthy."""
    [haproxy] = compose.containers("haproxy")
    assert compose.health(haproxy) == "healthy"
    config = compose.inspect(haproxy)[0]["Config"]["Healthcheck"]
    probe = docker("exec", haproxy, *config["Test"][1:], check=False)
    assert probe.returncode == 0
    # control: the same probe on a port nothing listens on fails
    broken = [part.replace(":8404/", ":8405/") for part in config["Test"][1:]]
    assert docker("exec", haproxy, *broken, check=False).returncode != 0


def test_secrets_are_generated_once_and_survive_down_and_up(compose):
    def secret(name):
        app = compose.containers("app")[0]
        return docker("exec", app, "cat", f"/run/stack-secrets/{name}").stdout.strip()

    first = {name: secret(name) for name in ("secret_key", "redis_password")}
    assert all(re.fullmatch(r"[0-9a-f]{64}", value) for value in first.values())
    compose.down()
    assert compose.containers(all=True) == []
    compose.up()
    assert {name: secret(name) for name in first} == first


def test_a_taken_port_gives_a_clear_message(compose):
    result = compose.up_on_a_taken_port("rtporttaken")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "address already in use" in output or "port is already allocated" in output, output
    assert "Traceback" not in output


def test_no_docker_engine_gives_a_clear_message(compose):
    """scripts/compose says so in one line; so does compose v2 on its own. Debian's compose v1 prints a Python
    traceback instead (the control), which is why scripts/compose checks first."""
    no_engine = {**compose.env, "DOCKER_HOST": "unix:///nonexistent/docker.sock"}
    result = subprocess.run(["scripts/compose", "ps"], cwd=ROOT, env=no_engine, capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.startswith("compose: no Docker engine answers at unix:///nonexistent/docker.sock")
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1
    raw = compose.compose("ps", check=False, env={"DOCKER_HOST": no_engine["DOCKER_HOST"]})
    assert raw.returncode != 0
    if compose.command == ["docker-compose"]:
        assert "Traceback" in raw.stderr
    else:
        assert re.search(r"(?i)cannot connect to the docker daemon", raw.stderr) and "Traceback" not in raw.stderr


def test_without_stickiness_the_same_clients_fail(compose, tmp_path):
    """Control: HAProxy without the cookie (round robin): the Node clients' polling requests reach replicas that
    do not know their session, so the check that passes above fails."""
    cfg = (ROOT / "haproxy" / "haproxy.cfg").read_text()
    unsticky = re.sub(r"(?m)^\s*(cookie|dynamic-cookie-key) .*$", "", cfg)
    assert unsticky != cfg
    (tmp_path / "haproxy.cfg").write_text(unsticky)
    override = tmp_path / "unsticky.yml"
    override.write_text(  # compose (v1 and v2) merges a service's volumes by their target path
        "services:\n  haproxy:\n    environment:\n      HAPROXY_BALANCE: roundrobin\n"
        f"    volumes:\n      - {tmp_path / 'haproxy.cfg'}:/usr/local/etc/haproxy/haproxy.cfg:ro\n"
    )
    compose.files.append(override)
    try:
        compose.compose("up", "-d", "haproxy")
        compose.wait_until_serving(replicas=3)
        ready, clients = fleet(compose, clients=30, duration=6, readyTimeoutMs=8000)
    finally:
        compose.files.remove(override)
        compose.compose("up", "-d", "haproxy")
    failed = [c for c in clients if c["errors"] or c["disconnects"] or len(c["runs"]) != 1]
    assert ready < 30 and failed, "without the cookie, clients lose their session"


def test_down_v_leaves_nothing_of_the_project(compose):
    compose.down("-v")
    label = f"label=com.docker.compose.project={PROJECT}"
    assert docker("ps", "-aq", "--filter", label).stdout.split() == []
    assert docker("network", "ls", "-q", "--filter", label).stdout.split() == []
    assert docker("volume", "ls", "-q", "--filter", label).stdout.split() == []
    names = docker("volume", "ls", "--format", "{{.Name}}").stdout.split()
    assert not [name for name in names if name.startswith(f"{PROJECT}_")]
