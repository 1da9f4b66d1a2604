"""The compose stack driven from Python: a Docker engine, the stand-in images, and one compose project.
Used by the Docker tests (tests/deployment/test_docker_compose.py, tests/deployment/test_docker_swarm.py) and by
bench/measure_docker.py. Everything is reached through the port HAProxy publishes on 127.0.0.1.

    engine = DockerEngine.ensure()               # answers, or is started (as root) and stopped by stop()
    env = standin_env()                          # PYTHON_IMAGE=... for images built without a registry
    stack = ComposeStack("rt-test", env)         # one compose project (docker compose or docker-compose)
    stack.up("--build"); stack.port; stack.down("-v")
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import urllib.request
from pathlib import Path

from native_stack import free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent


class DockerError(RuntimeError):
    pass


def run(argv, timeout=600, check=True, env=None, input=None):
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, input=input, cwd=ROOT)
    if check and result.returncode != 0:
        raise DockerError(
            f"{' '.join(argv)} exited {result.returncode}:\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
        )
    return result


def docker(*args, timeout=600, check=True, input=None):
    return run(["docker", *args], timeout=timeout, check=check, input=input)


def engine_answers():
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True, timeout=60).returncode == 0


class DockerEngine:
    """The Docker engine the tests use: one that already answers, or a dockerd started here (root only)."""

    def __init__(self, process=None, log=None):
        self.process = process
        self.log = log

    @classmethod
    def ensure(cls, log_path=None):
        if engine_answers():
            return cls()
        if shutil.which("dockerd") is None or os.geteuid() != 0:
            raise DockerError(
                "no Docker engine answers `docker info`, and none can be started here "
                "(needs root and dockerd: apt-get install docker.io)"
            )
        log_path = Path(log_path or ROOT / ".stack" / "dockerd.log")
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "ab")
        process = subprocess.Popen(["dockerd"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for(lambda: process.poll() is not None or engine_answers(), 60, "dockerd to answer", interval=0.5)
        except Exception:
            process.kill()
            raise
        if process.poll() is not None:
            raise DockerError(f"dockerd exited {process.returncode}; see {log_path}")
        return cls(process, log)

    def stop(self):
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self.log.close()
        self.process = None


def standin_env():
    """PYTHON_IMAGE=..., NODE_IMAGE=... for the stand-ins scripts/standin-images builds (cached)."""
    result = run([str(ROOT / "scripts" / "standin-images")], timeout=1200)
    return dict(line.split("=", 1) for line in result.stdout.split())


def compose_command():
    """`docker compose` (v2) where the plugin is installed, else Debian's `docker-compose` (v1)."""
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise DockerError("neither `docker compose` nor `docker-compose` is installed")


def inspect(*ids):
    return json.loads(docker("inspect", *ids).stdout) if ids else []


def nofile_limit(images, wanted=20000):
    """NOFILE_LIMIT for the compose files: `wanted`, or the Docker daemon's own open-file limit where that is lower
    (a container cannot be given more), as read in the Python image that `images` names."""
    image = images.get("PYTHON_IMAGE", "python:3.11-slim-bookworm")
    return str(min(wanted, int(docker("run", "--rm", "--entrypoint", "sh", image, "-c", "ulimit -Hn").stdout)))


def haproxy_metrics(container, check=True):
    """HAProxy's Prometheus metrics, from inside its container (the stats port is not published)."""
    return docker("exec", container, "wget", "-q", "-O", "-", "http://127.0.0.1:8404/metrics", check=check).stdout


def servers_up(metrics):
    """Backend servers HAProxy has UP (the server-template slots filled through Docker's DNS)."""
    return len(re.findall(r'^haproxy_server_status\{proxy="app",server="[^"]+",state="UP"\} 1$', metrics, re.M))


class Fleet:
    """tests/deployment/node/sio-fleet.mjs in the background: Node clients that keep asking which instance serves them.
    Starts them and waits for its first line (how many are connected and upgraded); result() waits for the rest."""

    def __init__(self, url, clients, duration, **options):
        options = {"url": url, "clients": clients, "durationMs": duration * 1000, **options}
        argv = ["node", str(ROOT / "tests" / "deployment" / "node" / "sio-fleet.mjs"), json.dumps(options)]
        self.process = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.duration = duration
        line = self.process.stdout.readline()
        if not line.startswith('{"ready"'):
            self.process.kill()
            raise DockerError(f"sio-fleet.mjs said {line!r} first; stderr: {self.process.communicate()[1][-2000:]}")
        self.ready = json.loads(line)["ready"]

    def result(self):
        """Per client: `runs` (instance, sid, transport, from, to, count), `connects`, `disconnects`, `errors`, ..."""
        out, err = self.process.communicate(timeout=self.duration + 30)
        if self.process.returncode != 0:
            raise DockerError(f"sio-fleet.mjs exited {self.process.returncode}: {err[-2000:]}")
        return json.loads(out.splitlines()[-1])["clients"]


def instances_of(client):
    """The instances that answered one Fleet client, in order, one entry per run of the same instance and sid."""
    return [run["instance"] for run in client["runs"]]


def copy_of_the_repo(tree):
    """The files a clone of the repo has (tracked, and untracked but not ignored) copied to `tree`: the same
    build context as the repo's, so building its image is a cache hit."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (n.decode() for n in listed)):
        source = ROOT / name
        if source.is_file():
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, tree / name)
    # the containers' users (the app's 10001, HAProxy's) read bind-mounted files: pytest's temp folders are 0700
    for folder in [*(d for d in tree.rglob("*") if d.is_dir()), tree, *tree.parents]:
        if folder in (Path("/"), Path("/tmp")):
            break
        folder.chmod(folder.stat().st_mode | 0o755)


class ComposeStack:
    """One compose project of the repo's docker-compose.yml, on a free published port (STACK_PORT)."""

    def __init__(self, project, env=None, files=(), port=None, directory=ROOT, tls_port=None, cafile=None):
        self.project = project
        self.port = port or free_port()
        self.tls_port, self.cafile = tls_port, cafile  # with docker-compose.tls.yml: STACK_TLS_PORT, its CA
        self.directory = Path(directory)  # the project directory: its .env, build context and relative paths
        self.files = [self.directory / "docker-compose.yml", *(self.directory / f for f in files)]
        self.env = {
            **{k: v for k, v in os.environ.items() if k not in ("APP_REPLICAS", "STACK_PORT", "COMPOSE_FILE")},
            **(env or {}),
            "STACK_PORT": str(self.port),
            **({"STACK_TLS_PORT": str(tls_port)} if tls_port else {}),
        }
        self.command = compose_command()

    @property
    def url(self):
        return f"https://127.0.0.1:{self.tls_port}" if self.tls_port else f"http://127.0.0.1:{self.port}"

    def compose(self, *args, timeout=900, check=True, env=None):
        argv = [*self.command, "-p", self.project, "--project-directory", str(self.directory)]
        for file in self.files:
            argv += ["-f", str(file)]
        return run([*argv, *args], timeout=timeout, check=check, env={**self.env, **(env or {})})

    def up(self, *args, timeout=900, env=None):
        self.compose("up", "-d", *args, timeout=timeout, env=env)
        self.wait_until_serving()

    def down(self, *args):
        return self.compose("down", "--timeout", "5", *args, timeout=300, check=False)

    def inspected(self, service=None, all=False):
        """`docker inspect` of the project's containers (of one service), oldest first."""
        filters = ["--filter", f"label=com.docker.compose.project={self.project}"]
        if service:
            filters += ["--filter", f"label=com.docker.compose.service={service}"]
        ids = docker("ps", "-q", *(["-a"] if all else []), *filters).stdout.split()
        return sorted(inspect(*ids), key=lambda c: c["Created"])

    def containers(self, service=None, all=False):
        """Container ids of the project (of one service), oldest first."""
        return [c["Id"] for c in self.inspected(service, all)]

    inspect = staticmethod(inspect)

    def hostnames(self, service="app"):
        """container id -> the name the app reports (its hostname, the short container id)."""
        return {c["Id"]: c["Config"]["Hostname"] for c in self.inspected(service)}

    def health(self, container):
        state = self.inspect(container)[0]["State"]
        return state.get("Health", {}).get("Status", state["Status"])

    def logs(self, service, tail=200):
        return self.compose("logs", "--no-color", "--tail", str(tail), service, check=False).stdout

    def get(self, path, timeout=5, headers=None):
        request = urllib.request.Request(self.url + path, headers=headers or {})
        context = ssl.create_default_context(cafile=self.cafile) if self.tls_port else None
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            return response.status, response.headers, response.read()

    def haproxy_metrics(self):
        [haproxy] = self.containers("haproxy")
        return haproxy_metrics(haproxy)

    def wait_until_serving(self, replicas=None, timeout=180):
        """Every container healthy (one-shots exited 0), HAProxy serving a handshake, `replicas` servers UP."""

        def ready():
            for container in self.inspected(all=True):
                state = container["State"]
                if container["Config"]["Labels"].get("com.docker.compose.service") == "secrets-init":
                    if state["Status"] != "exited" or state["ExitCode"] != 0:
                        return False
                elif state.get("Health", {}).get("Status", "healthy") != "healthy" or not state["Running"]:
                    return False
            try:
                status, _, _ = self.get("/socket.io/?EIO=4&transport=polling", timeout=2)
            except OSError:
                return False
            return status == 200 and (replicas is None or servers_up(self.haproxy_metrics()) == replicas)

        wait_for(ready, timeout, f"compose project {self.project} to serve", interval=1)

    def up_on_a_taken_port(self, project):
        """`up -d` of HAProxy alone, in another project, on a port something else listens on: what compose says."""
        with socket.socket() as taken:
            taken.bind(("0.0.0.0", 0))
            taken.listen()
            other = ComposeStack(project, self.env, port=taken.getsockname()[1])
            try:
                return other.compose("up", "-d", "--no-deps", "haproxy", check=False, timeout=300)
            finally:
                other.down("-v")
