"""deploy/swarm/docker-stack.yml for real: `docker swarm init` on this host (a one-node swarm), the image built
from the Dockerfile, `docker stack deploy`, Node clients through the port HAProxy publishes, a scale of the app
service; the stack, its secrets and the swarm are gone at the end."""

import os
import secrets
import urllib.request

import pytest
from docker_stack import Fleet, docker, haproxy_metrics, inspect, instances_of, run, servers_up
from native_stack import free_port, wait_for

STACK = "rtswarm"
IMAGE = "realtime-swarm-test:latest"
SECRETS = ("realtime_secret_key", "realtime_redis_password")


class SwarmStack:
    def __init__(self, env):
        self.port = free_port()
        self.env = {**env, "STACK_PORT": str(self.port), "APP_IMAGE": IMAGE, "NOFILE_LIMIT": "10000"}
        self.url = f"http://127.0.0.1:{self.port}"

    def containers(self, service):
        return docker("ps", "-q", "--filter", f"label=com.docker.swarm.service.name={STACK}_{service}").stdout.split()

    def hostnames(self):
        ids = self.containers("app")
        return {c["Config"]["Hostname"] for c in inspect(*ids)}

    def servers_up(self):
        haproxy = self.containers("haproxy")
        return servers_up(haproxy_metrics(haproxy[0], check=False)) if len(haproxy) == 1 else -1

    def wait_until_serving(self, replicas, timeout=240):
        def ready():
            if len(self.hostnames()) != replicas or self.servers_up() != replicas:
                return False
            try:  # and HAProxy's published port answers a handshake
                with urllib.request.urlopen(f"{self.url}/socket.io/?EIO=4&transport=polling", timeout=2) as reply:
                    return reply.status == 200
            except OSError:
                return False

        wait_for(ready, timeout, f"{replicas} app tasks UP behind HAProxy", interval=2)


def teardown():
    """`docker stack rm`, the secrets, `docker swarm leave`: what a user runs to remove it all."""
    docker("stack", "rm", STACK, check=False)
    label = f"label=com.docker.stack.namespace={STACK}"
    wait_for(lambda: not docker("ps", "-aq", "--filter", label).stdout.split(), 120, "the stack's containers to go", 1)
    for name in SECRETS:
        docker("secret", "rm", name, check=False)
    docker("swarm", "leave", "--force", check=False)


@pytest.fixture(scope="module")
def swarm(docker_engine, docker_images):
    state = docker("info", "--format", "{{.Swarm.LocalNodeState}}").stdout.strip()
    if state != "inactive":
        pytest.skip(f"this Docker engine is already in a swarm ({state}): not touching it")
    build_args = [f"--build-arg={k}={v}" for k, v in docker_images.items() if k in ("PYTHON_IMAGE", "NODE_IMAGE")]
    build_env = {**os.environ, "DOCKER_BUILDKIT": os.environ.get("DOCKER_BUILDKIT", "0")}
    run(["docker", "build", "-q", "-t", IMAGE, *build_args, "."], timeout=900, env=build_env)
    docker("swarm", "init", "--advertise-addr", "127.0.0.1")
    stack = SwarmStack(docker_images)
    try:
        for name in SECRETS:
            docker("secret", "create", name, "-", input=secrets.token_hex(32))
        run(
            ["docker", "stack", "deploy", "-c", "deploy/swarm/docker-stack.yml", STACK], env={**os.environ, **stack.env}
        )
        stack.wait_until_serving(replicas=3)
        yield stack
    finally:
        teardown()


def test_stack_deploy_serves_sticky_clients_and_scales(swarm):
    run = Fleet(swarm.url, 30, 6)
    assert run.ready == 30
    clients = run.result()
    assert {instances_of(c)[0] for c in clients} == swarm.hostnames()
    assert len(swarm.hostnames()) == 3
    for client in clients:
        assert len(client["runs"]) == 1 and client["transportAtEnd"] == "websocket"
        assert client["disconnects"] == [] and client["errors"] == {}

    docker("service", "scale", "--detach", f"{STACK}_app=5")
    swarm.wait_until_serving(replicas=5)
    run = Fleet(swarm.url, 40, 4)
    clients = run.result()
    assert run.ready == 40, [c["errors"] for c in clients if c["errors"]][:5]
    assert {instances_of(c)[0] for c in clients} == swarm.hostnames()
    assert len(swarm.hostnames()) == 5


def test_tasks_run_with_nofile_limit(swarm):
    for service in ("app", "haproxy"):
        container = swarm.containers(service)[0]
        assert docker("exec", container, "sh", "-c", "ulimit -n").stdout.strip() == "10000"


def test_stack_rm_and_swarm_leave_leave_nothing(swarm):
    teardown()
    assert docker("info", "--format", "{{.Swarm.LocalNodeState}}").stdout.strip() == "inactive"
    label = f"label=com.docker.stack.namespace={STACK}"
    assert docker("ps", "-aq", "--filter", label).stdout.split() == []
    assert docker("network", "ls", "-q", "--filter", label).stdout.split() == []
