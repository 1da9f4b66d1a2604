"""REDIS_URL=redis+sentinel://...: config parsing (unit), and a real native stack whose instances find their
Redis master through a real `redis-server --sentinel` (message queue, readiness, sign-in, presence)."""

import subprocess
import uuid

import pytest
import redis
import requests
import socketio
from native_stack import Stack, free_port, port_is_free, wait_for
from scenarios_faults import stack_env

from deployment.operations.message_queue import close_client, parse_sentinel_url, redis_client
from deployment.settings import ConfigError, Settings, mask_url_password

# the full tier (tests/conftest.py): this module starts processes of the stack
pytestmark = pytest.mark.stack

SERVICE = "mymaster"


# --- config (unit) ----------------------------------------------------------------------------------------
def settings(**env):
    return Settings.from_env({"APP_ENV": "development", **env})


def test_sentinel_url_is_accepted_and_parsed():
    url = "redis+sentinel://s1.example:26379,10.0.0.2:26380/2/mymaster"
    assert settings(REDIS_URL=url).redis_url == url
    assert parse_sentinel_url(url) == ([("s1.example", 26379), ("10.0.0.2", 26380)], "mymaster", {"db": 2})


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel://s1:26379",  # no db, no service: python-socketio would use the channel name
        "redis+sentinel://s1:26379/0",
        "redis+sentinel://s1:26379/0/",
        "redis+sentinel://s1:26379//mymaster",
    ],
)
def test_sentinel_url_without_service_name_is_refused(url):
    with pytest.raises(ConfigError) as refused:
        settings(REDIS_URL=url)
    message = str(refused.value)
    assert message.startswith("REDIS_URL=") and "service name" in message
    assert "redis+sentinel://[:password@]host1:port1[,host2:port2...]/db/service_name" in message


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("redis+sentinel://s1/0/mymaster", "must be host:port"),
        ("redis+sentinel://s1:26379,s2/0/mymaster", "'s2' must be host:port"),
        ("redis+sentinel://s1:port/0/mymaster", "must be host:port"),
        ("redis+sentinel://s1:26379/zero/mymaster", "db 'zero' must be a number"),
    ],
)
def test_malformed_sentinel_urls_are_refused(url, complaint):
    with pytest.raises(ConfigError, match="REDIS_URL=") as refused:
        settings(REDIS_URL=url)
    assert complaint in str(refused.value)


def test_other_schemes_still_refused_without_showing_the_password():
    with pytest.raises(ConfigError) as refused:
        settings(REDIS_URL="sentinel://:hunter2@s1:26379/0/mymaster")
    assert "redis+sentinel://" in str(refused.value) and "hunter2" not in str(refused.value)
    with pytest.raises(ConfigError) as refused:
        settings(REDIS_URL="redis+sentinel://:hunter2@s1/0/mymaster")
    assert "hunter2" not in str(refused.value) and ":***@" in str(refused.value)


def test_redis_password_goes_into_sentinel_url_and_is_masked(tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("p@ss/w:rd\n")
    loaded = settings(REDIS_URL="redis+sentinel://s1:26379,s2:26379/0/mymaster", REDIS_PASSWORD_FILE=str(secret))
    assert loaded.redis_url == "redis+sentinel://:p%40ss%2Fw%3Ard@s1:26379,s2:26379/0/mymaster"
    assert loaded.public_dict()["redis_url"] == "redis+sentinel://:***@s1:26379,s2:26379/0/mymaster"
    # the password is the master's (percent-decoded like redis-py does for redis://), never the sentinels'
    sentinels, service, connection = parse_sentinel_url(loaded.redis_url)
    assert (sentinels, service, connection) == (
        [("s1", 26379), ("s2", 26379)],
        "mymaster",
        {"password": "p@ss/w:rd", "db": 0},
    )
    client = redis_client(loaded.redis_url, socket_timeout=0.5)
    try:
        assert client.connection_pool.connection_kwargs["password"] == "p@ss/w:rd"
        assert "password" not in client.connection_pool.sentinel_manager.sentinel_kwargs
        assert client.connection_pool.sentinel_manager.sentinel_kwargs["socket_timeout"] == 0.5
    finally:
        close_client(client)
    # a URL that has its own password keeps it; REDIS_PASSWORD is only for URLs without one
    own = settings(REDIS_URL="redis+sentinel://:mine@s1:26379/0/mymaster", REDIS_PASSWORD="other")
    assert own.redis_url == "redis+sentinel://:mine@s1:26379/0/mymaster"


def test_mask_url_password_forms():
    assert mask_url_password("redis+sentinel://:pw@a:1,b:2/0/m") == "redis+sentinel://:***@a:1,b:2/0/m"
    assert mask_url_password("redis+sentinel://user:pw@a:1/0/m") == "redis+sentinel://user:***@a:1/0/m"
    assert mask_url_password("redis+sentinel://a:1,b:2/0/m") == "redis+sentinel://a:1,b:2/0/m"
    assert mask_url_password("redis://:pw@h:6379/0") == "redis://:***@h:6379/0"


def test_plain_redis_url_still_gives_a_plain_client():
    client = redis_client("redis://:pw@127.0.0.1:6390/3", socket_timeout=2)
    try:
        assert type(client.connection_pool) is redis.ConnectionPool
        kwargs = client.connection_pool.connection_kwargs
        assert (kwargs["host"], kwargs["port"], kwargs["db"], kwargs["password"]) == ("127.0.0.1", 6390, 3, "pw")
        assert kwargs["socket_timeout"] == 2 and kwargs["socket_connect_timeout"] == 2.0 and kwargs["socket_keepalive"]
    finally:
        close_client(client)


# --- real processes ---------------------------------------------------------------------------------------
def start(argv, log_path):
    with open(log_path, "ab") as log:
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def stop(proc):
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def sentinel(tmp_path_factory, request):
    """A Redis master and one sentinel monitoring it as `mymaster`; both stopped after the module."""
    folder = tmp_path_factory.mktemp("sentinel")
    master_port, sentinel_port = free_port(), free_port()
    master = start(
        ["redis-server", "--port", str(master_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        + ["--dir", str(folder)],
        folder / "master.log",
    )
    request.addfinalizer(lambda: stop(master))
    config = folder / "sentinel.conf"  # the sentinel rewrites it: must be its own, writable file
    config.write_text(
        f"port {sentinel_port}\nbind 127.0.0.1\ndir {folder}\nsentinel resolve-hostnames no\n"
        f"sentinel monitor {SERVICE} 127.0.0.1 {master_port} 1\n"
    )
    sentinel_proc = start(["redis-server", str(config), "--sentinel"], folder / "sentinel.log")
    request.addfinalizer(lambda: stop(sentinel_proc))
    wait_for(lambda: not port_is_free(master_port) and not port_is_free(sentinel_port), 10, "redis and sentinel")

    def knows_master():
        client = redis.Redis(port=sentinel_port, socket_timeout=1, decode_responses=True)
        try:
            return client.sentinel_get_master_addr_by_name(SERVICE) == ("127.0.0.1", master_port)
        except redis.RedisError:
            return False
        finally:
            client.close()

    wait_for(knows_master, 15, "the sentinel to know the master")
    return {
        "master_port": master_port,
        "sentinel_port": sentinel_port,
        "url": f"redis+sentinel://127.0.0.1:{sentinel_port}/0/{SERVICE}",
        "logs": folder,
    }


@pytest.fixture(scope="module")
def master(sentinel):
    client = redis.Redis(port=sentinel["master_port"], socket_timeout=2, decode_responses=True)
    yield client
    client.close()


def sentinel_stack(folder, redis_url, replicas, **env):
    return Stack(
        state_dir=folder,
        port=free_port(),
        replicas=replicas,
        env=stack_env(REDIS_URL=redis_url, **env),
    )


@pytest.fixture(scope="module")
def stack(sentinel, tmp_path_factory, request):
    """3 instances with REDIS_URL=redis+sentinel://127.0.0.1:<sentinel>/0/mymaster and REQUIRE_LOGIN=true."""
    stack = sentinel_stack(tmp_path_factory.mktemp("stack"), sentinel["url"], 3, REQUIRE_LOGIN="true")
    request.addfinalizer(stack.down)  # before up(): a failed start is stopped too (up() also cleans up)
    stack.up()
    assert stack.load()["redis"].get("external") and stack.load()["redis"]["pid"] is None  # no Redis of its own
    return stack


def test_redis_client_finds_the_master_through_the_sentinel(sentinel, master):
    key = f"sentinel-test:{uuid.uuid4().hex}"
    client = redis_client(sentinel["url"], socket_timeout=2)
    try:
        assert client.ping()
        client.set(key, "via-sentinel", ex=60)
        assert client.connection_pool.get_master_address() == ("127.0.0.1", sentinel["master_port"])
    finally:
        close_client(client)
    assert master.get(key) == "via-sentinel"


def test_instances_are_ready_with_message_queue_through_sentinel(stack):
    for app in stack.status()["apps"]:
        body = requests.get(app["url"] + "/readyz", timeout=5).json()
        assert body["ready"] is True and body["message_queue"] == "ok", (app["name"], body)
    for log in stack.logs.glob("app*.log"):
        text = log.read_text()
        assert "redis+sentinel://127.0.0.1:" in text and "unreachable" not in text, log


def signed_in_session(url, name):
    http = requests.Session()
    assert http.post(url + "/login", json={"name": name}, timeout=5).json() == {"user": name}
    return http


def test_broadcast_reaches_clients_on_every_instance(stack, clients, master):
    apps = stack.status()["apps"]
    group = []
    for i, app in enumerate(apps):
        # signed in on another instance than the one it connects to: the user directory is in Redis
        http = signed_in_session(apps[(i + 1) % len(apps)]["url"], f"bc{i}-{uuid.uuid4().hex[:6]}")
        group.append(clients(app["url"], http_session=http))
    assert [client.call("whoami") for client in group] == [app["name"] for app in apps]
    assert master.pubsub_numsub("flask-socketio")[0][1] == len(apps)  # every instance subscribed on the master
    token = uuid.uuid4().hex
    assert group[0].call("broadcast", {"token": token}) == {"ok": True}
    for client in group:
        assert client.wait_for("broadcast", lambda data: data == {"token": token}), client.call("whoami")


def test_sign_in_through_haproxy_then_connect(stack, master, clients):
    url = stack.status()["url"]
    refused = socketio.Client(reconnection=False)
    with pytest.raises(socketio.exceptions.ConnectionError):  # control: REQUIRE_LOGIN is on
        refused.connect(url, transports=["polling"], wait_timeout=5)

    name = f"ada-{uuid.uuid4().hex[:6]}"
    http = signed_in_session(url, name)
    assert master.exists(f"user:{name}")  # recorded on the master the sentinel names
    client = clients(url, transports=["polling", "websocket"], http_session=http)
    room = uuid.uuid4().hex
    assert client.call("join", {"room": room}, timeout=5) == {"ok": True, "room": room}
    assert client.call("say", {"room": room, "message": "hello"}, timeout=5) == {"ok": True}
    assert client.wait_for("message", timeout=5)
    assert client.events("message")[0]["user"] == name


def test_control_unknown_service_reports_queue_down(sentinel, tmp_path, request):
    """The same sentinel, a service name it does not monitor: the instance starts (it never crash-loops on
    Redis) but /readyz says the queue is down, and the log says why."""
    url = f"redis+sentinel://127.0.0.1:{sentinel['sentinel_port']}/0/nosuch"
    stack = sentinel_stack(tmp_path / "stack", url, 1, REDIS_WAIT_SECONDS="1")
    request.addfinalizer(stack.down)
    stack.up()
    app = stack.status()["apps"][0]
    body = requests.get(app["url"] + "/readyz", timeout=5).json()
    assert body["message_queue"] == "down: MasterNotFoundError", body
    log = (stack.logs / "app1.log").read_text()
    assert "No master found for 'nosuch'" in log and "starting anyway" in log, log[-2000:]
