"""The whole stack without Docker: Redis, APP_REPLICAS gunicorn instances and HAProxy, started from the
repo's own wsgi.py, gunicorn.conf.py and haproxy/haproxy.cfg. Used by `scripts/stack` and by the tests.

    scripts/stack up | status | down | restart-app NAME | scale N | reload

Environment: STACK_PORT (8080, HAProxy's public port), APP_REPLICAS (3), STACK_DIR (.stack/ in the repo),
REDIS_URL (set it to use your own Redis instead of starting one); every other variable is passed to the
app instances (see docs/configuration.md).
"""

from __future__ import annotations

import csv
import io
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HAPROXY_CFG = ROOT / "haproxy" / "haproxy.cfg"
MAX_REPLICAS = 8  # server slots in haproxy.cfg's native branch


class StackError(RuntimeError):
    pass


def slot_number(name):
    """app4 -> 4: the haproxy.cfg slot (APP4_ADDR, `server app4 ... cookie app4`) of an instance."""
    number = name[3:] if name.startswith("app") else ""
    if not number.isdigit() or not 1 <= int(number) <= MAX_REPLICAS:
        raise StackError(f"instance name {name!r} is not app1 ... app{MAX_REPLICAS}")
    return int(number)


_ports_handed_out = set()


def free_port(host="127.0.0.1"):
    """A port free now and not handed out before by this process.

    bind(0) may give the same port again once its socket is closed, so two ports picked
    before either is listened on (Redis' and an instance's) could otherwise be one.
    """
    for _ in range(1000):
        with socket.socket() as sock:
            sock.bind((host, 0))
            port = sock.getsockname()[1]
        if port not in _ports_handed_out:
            _ports_handed_out.add(port)
            return port
    raise StackError("no free port that was not handed out before")


def port_is_free(port, host="127.0.0.1"):
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped by the process that started it) is not alive
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def haproxy_maxconn(ceiling=20000):
    """The largest maxconn this machine's file-descriptor limit allows (two per connection)."""
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY:
        return ceiling
    return max(256, min(ceiling, (hard - 100) // 2))


def redis_server_argv(port, folder):
    """A loopback-only, non-persistent redis-server: the message queue only carries pub/sub."""
    return [
        "redis-server",
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(folder),
    ]


def wait_for(predicate, timeout, what, interval=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise StackError(f"timed out after {timeout}s waiting for {what}")


def haproxy_command(sock_path, command):
    """One command on HAProxy's runtime API socket."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(str(sock_path))
        sock.sendall(command.encode() + b"\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode()


def haproxy_stats(sock_path):
    """HAProxy's `show stat`, one dict per proxy or server row (pxname, svname, status, dreq, ...)."""
    return list(csv.DictReader(io.StringIO(haproxy_command(sock_path, "show stat").lstrip("# "))))


class Stack:
    """A native stack whose state (pids, ports, logs) lives in one folder."""

    def __init__(self, state_dir=None, port=None, replicas=None, env=None, python=None, message_queue=True):
        base_env = dict(os.environ if env is None else env)
        self.env = base_env
        self.dir = Path(state_dir or base_env.get("STACK_DIR") or ROOT / ".stack").resolve()
        self.port = int(port or base_env.get("STACK_PORT") or 8080)
        self.replicas = int(replicas or base_env.get("APP_REPLICAS") or 3)
        self.python = python or sys.executable
        self.message_queue = message_queue  # False: instances run without Redis (a test control)
        self.state_file = self.dir / "state.json"
        self.logs = self.dir / "logs"

    # --- state --------------------------------------------------------------------------------------
    def load(self):
        if not self.state_file.exists():
            return None
        return json.loads(self.state_file.read_text())

    def save(self, state):
        self.state_file.write_text(json.dumps(state, indent=2))

    # --- processes ----------------------------------------------------------------------------------
    def spawn(self, name, argv, env):
        self.logs.mkdir(parents=True, exist_ok=True)
        log = open(self.logs / f"{name}.log", "ab")
        proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group, so `down` stops its children too
        )
        log.close()
        return proc.pid

    def app_env(self, state, app):
        env = dict(self.env)
        env.update(
            INSTANCE_NAME=app["name"],
            BIND=f"127.0.0.1:{app['port']}",
            REDIS_URL=state["redis"]["url"] if self.message_queue else "",
            SECRET_KEY=state["secret_key"],
            PYTHONUNBUFFERED="1",
        )
        # the stack's own knobs are not app settings; GUNICORN_CMD_ARGS and WEB_CONCURRENCY still pass
        for key in ("STACK_PORT", "STACK_DIR", "APP_REPLICAS"):
            env.pop(key, None)
        return env

    def start_app(self, state, app):
        gunicorn = str(Path(self.python).with_name("gunicorn"))
        argv = [gunicorn, "--config", str(ROOT / "gunicorn.conf.py")]
        app["pid"] = self.spawn(app["name"], argv, self.app_env(state, app))

    def haproxy_env(self, state):
        env = dict(self.env)
        env.update(
            HAPROXY_BIND=f"127.0.0.1:{state['port']}",
            HAPROXY_STATS_BIND=f"127.0.0.1:{state['haproxy']['stats_port']}",
            HAPROXY_STATS_USER="admin",
            HAPROXY_STATS_PASSWORD=state["haproxy"]["stats_password"],
            HAPROXY_RUNTIME_SOCKET=state["haproxy"]["socket"],
        )
        env.setdefault("HAPROXY_MAXCONN", str(haproxy_maxconn()))
        for key in [k for k in env if k.startswith("APP") and k.endswith("_ADDR")]:
            del env[key]
        env.pop("APP_DNS_NAME", None)
        # by name, not by position: after `scale` the live set can be app1, app4 (server name = instance name)
        for app in state["apps"]:
            env[f"APP{slot_number(app['name'])}_ADDR"] = f"127.0.0.1:{app['port']}"
        return env

    # --- commands -----------------------------------------------------------------------------------
    def up(self, timeout=60):
        current = self.load()
        if current and any(pid_alive(pid) for pid in self.pids(current)):
            raise StackError(f"a stack is already running from {self.dir} (scripts/stack down first)")
        if not 1 <= self.replicas <= MAX_REPLICAS:
            raise StackError(f"APP_REPLICAS={self.replicas}: haproxy.cfg has slots for 1 to {MAX_REPLICAS}")
        if not port_is_free(self.port):
            raise StackError(f"STACK_PORT={self.port} is taken: choose another one")
        for tool in ("haproxy", "redis-server"):
            if not shutil.which(tool):
                raise StackError(f"{tool} is not installed: apt-get install haproxy redis-server")
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / ".gitignore").write_text("*\n")
        state = {
            "port": self.port,
            "secret_key": self.env.get("SECRET_KEY") or secrets.token_hex(32),
            "apps": [{"name": f"app{i}", "port": free_port()} for i in range(1, self.replicas + 1)],
            "haproxy": {
                "stats_port": free_port(),
                "stats_password": secrets.token_urlsafe(12),
                "socket": str(self.dir / "haproxy.sock"),
                "pidfile": str(self.dir / "haproxy.pid"),
            },
        }
        if self.env.get("REDIS_URL"):
            state["redis"] = {"url": self.env["REDIS_URL"], "pid": None, "external": True}
        else:
            redis_port = free_port()
            state["redis"] = {"url": f"redis://127.0.0.1:{redis_port}/0", "port": redis_port}
            state["redis"]["pid"] = self.spawn(
                "redis",
                redis_server_argv(redis_port, self.dir),
                dict(os.environ),
            )
        self.save(state)
        try:
            if state["redis"].get("port"):
                wait_for(lambda: not port_is_free(state["redis"]["port"]), 10, "redis-server to listen")
            for app in state["apps"]:
                self.start_app(state, app)
            self.save(state)
            for app in state["apps"]:
                wait_for(lambda a=app: self.app_ready(a), timeout, f"{app['name']} to answer /readyz")
            self.start_haproxy(state)
            self.save(state)
            self.wait_all_up(state, timeout)
        except Exception:
            self.down()
            raise
        return self.status()

    def start_haproxy(self, state, replaces=None):
        subprocess.run(["haproxy", "-c", "-q", "-f", str(HAPROXY_CFG)], env=self.haproxy_env(state), check=True)
        argv = ["haproxy", "-W", "-f", str(HAPROXY_CFG), "-p", state["haproxy"]["pidfile"]]
        if replaces:
            # take the listening sockets over from the running HAProxy through its runtime socket (-x), then
            # soft-stop it (-sf): it finishes its connections, WebSockets up to hard-stop-after
            argv += ["-x", state["haproxy"]["socket"], "-sf", str(replaces)]
        state["haproxy"]["pid"] = self.spawn("haproxy", argv, self.haproxy_env(state))

    def reload_haproxy(self, state=None, timeout=30):
        """Graceful reload with the stack's current instances (also after `scale`): a new HAProxy master
        takes the listening sockets over and the old one finishes its connections. Not SIGUSR2: the master
        would re-exec with the environment it started with, i.e. the APPn_ADDR of `up`."""
        state = state or self.load()
        old = state["haproxy"]["pid"]
        previous = [pid for pid in state["haproxy"].get("previous_pids", []) if pid_alive(pid)]
        state["haproxy"]["previous_pids"] = previous + [old]  # `down` stops them if they are still finishing
        self.start_haproxy(state, replaces=old)
        self.save(state)
        wait_for(
            lambda: self.haproxy_worker_master(state) == state["haproxy"]["pid"],
            timeout,
            "the new HAProxy to answer on the runtime socket",
        )
        self.wait_all_up(state, timeout)

    def haproxy_worker_master(self, state):
        """The pid of the master whose worker answers on the runtime socket (None if none answers)."""
        try:
            info = haproxy_command(state["haproxy"]["socket"], "show info")
        except OSError:
            return None
        worker = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("Pid:")), "")
        try:
            with open(f"/proc/{int(worker)}/stat") as stat:
                return int(stat.read().rsplit(")", 1)[1].split()[1])  # field 4: the parent's pid
        except (OSError, ValueError, IndexError):
            return None

    # --- scaling ------------------------------------------------------------------------------------
    def runtime(self, state, command):
        """One HAProxy runtime API command that must succeed (errors come back as text)."""
        reply = haproxy_command(state["haproxy"]["socket"], command).strip()
        if reply.lower().startswith(("no such", "unknown", "require", "invalid", "failed")):
            raise StackError(f"HAProxy refused {command!r}: {reply}")
        return reply

    def scale(self, replicas, timeout=60):
        """Runs `replicas` app instances: starts new ones in the free slots (app4, app5 ... after app1-app3),
        or stops surplus ones gracefully (dead ones first, then the highest-numbered), and switches HAProxy's
        slots through its runtime API (`set server app/appN addr|state`). No reload: the other instances'
        clients keep their connections, and every live instance keeps its name, so its cookies stay valid."""
        state = self.load()
        if state is None or not state["haproxy"].get("pid") or not pid_alive(state["haproxy"]["pid"]):
            raise StackError(f"no stack is running from {self.dir} (scripts/stack up first)")
        if not 1 <= replicas <= MAX_REPLICAS:
            raise StackError(f"scale {replicas}: haproxy.cfg has slots for 1 to {MAX_REPLICAS} instances")
        if replicas > len(state["apps"]):
            self.add_apps(state, replicas - len(state["apps"]), timeout)
        elif replicas < len(state["apps"]):
            self.remove_apps(state, len(state["apps"]) - replicas)
        return self.status()

    def add_apps(self, state, count, timeout):
        taken = {app["name"] for app in state["apps"]}
        names = [f"app{n}" for n in range(1, MAX_REPLICAS + 1) if f"app{n}" not in taken][:count]
        new = [{"name": name, "port": free_port()} for name in names]
        state["apps"] = sorted(state["apps"] + new, key=lambda app: slot_number(app["name"]))
        for app in new:
            self.start_app(state, app)
        self.save(state)  # pids first: `down` stops them whatever happens next
        try:
            for app in new:
                wait_for(lambda a=app: self.app_ready(a), timeout, f"{app['name']} to answer /readyz")
        except StackError:
            for app in new:
                self.stop_pid(app["pid"])
            state["apps"] = [app for app in state["apps"] if app not in new]
            self.save(state)
            raise
        for app in new:
            self.runtime(state, f"set server app/{app['name']} addr 127.0.0.1 port {app['port']}")
            self.runtime(state, f"set server app/{app['name']} state ready")
        self.wait_all_up(state, timeout)

    def remove_apps(self, state, count):
        def alive(app):
            return bool(app.get("pid")) and pid_alive(app["pid"])

        surplus = sorted(state["apps"], key=lambda app: (alive(app), -slot_number(app["name"])))[:count]
        for app in surplus:
            # no new clients; the ones it has keep reaching it until its graceful stop closes their connections
            # (deployment/operations/lifecycle.py), then they reconnect to the others (option redispatch)
            self.runtime(state, f"set server app/{app['name']} state drain")
        for app in surplus:
            if alive(app):
                os.killpg(app["pid"], signal.SIGTERM)  # all at once; stop_pid below waits for each
        grace = int(self.env.get("GRACEFUL_TIMEOUT") or 20) + 5
        for app in surplus:
            if app.get("pid"):
                self.stop_pid(app["pid"], timeout=grace)
            self.runtime(state, f"set server app/{app['name']} state maint")
        state["apps"] = [app for app in state["apps"] if app not in surplus]
        self.save(state)

    def app_ready(self, app):
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{app['port']}/readyz", timeout=1) as resp:
                return resp.status == 200
        except OSError:
            return False

    def server_states(self, state=None):
        """{server name: HAProxy status (UP, DOWN, MAINT, ...)} from the runtime API."""
        state = state or self.load()
        return {
            row["svname"]: row["status"]
            for row in haproxy_stats(state["haproxy"]["socket"])
            if row["pxname"] == "app" and row["svname"] not in ("FRONTEND", "BACKEND")
        }

    def wait_all_up(self, state, timeout):
        names = {app["name"] for app in state["apps"]}

        def all_up():
            try:
                states = self.server_states(state)
            except OSError:
                return False
            return all(states.get(name, "").startswith("UP") for name in names)

        wait_for(all_up, timeout, "HAProxy to report every app server UP", interval=0.2)

    def pids(self, state):
        pids = [app.get("pid") for app in state["apps"]]
        pids += [state["redis"].get("pid"), state["haproxy"].get("pid"), *state["haproxy"].get("previous_pids", [])]
        return [pid for pid in pids if pid]

    def status(self):
        state = self.load()
        if state is None:
            return {"running": False}
        stats_auth = f"admin:{state['haproxy']['stats_password']}"
        return {
            "url": f"http://127.0.0.1:{state['port']}",
            "apps": [
                {
                    "name": app["name"],
                    "url": f"http://127.0.0.1:{app['port']}",
                    "pid": app.get("pid"),
                    "alive": bool(app.get("pid")) and pid_alive(app["pid"]),
                }
                for app in state["apps"]
            ],
            "redis": {"url": state["redis"]["url"], "pid": state["redis"].get("pid")},
            "haproxy": {
                "pid": state["haproxy"].get("pid"),
                "stats_url": f"http://{stats_auth}@127.0.0.1:{state['haproxy']['stats_port']}/stats",
                "metrics_url": f"http://127.0.0.1:{state['haproxy']['stats_port']}/metrics",
                "runtime_socket": state["haproxy"]["socket"],
            },
            "logs": str(self.logs),
        }

    def stop_pid(self, pid, timeout=25, sig=signal.SIGTERM):
        """`sig` (SIGTERM) to the process group, then SIGKILL what is left after `timeout` seconds."""
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                finished, _ = os.waitpid(pid, os.WNOHANG)  # reap it when it is our own child
                if finished:
                    return
            except ChildProcessError:
                if not pid_alive(pid):
                    return
            time.sleep(0.05)
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def down(self):
        state = self.load()
        if state is None:
            return
        if state["haproxy"].get("pid"):
            self.stop_pid(state["haproxy"]["pid"], timeout=5)
        for pid in state["haproxy"].get("previous_pids", []):  # replaced by reload_haproxy, maybe still finishing
            if pid_alive(pid):
                self.stop_pid(pid, timeout=5)
        # HAProxy is gone, so there is nothing to drain (deployment/operations/lifecycle.py): gunicorn's quick stop
        # (SIGINT), all instances at the same time
        stoppers = [
            threading.Thread(target=self.stop_pid, args=(app["pid"], 25, signal.SIGINT))
            for app in state["apps"]
            if app.get("pid")
        ]
        for thread in stoppers:
            thread.start()
        for thread in stoppers:
            thread.join()
        if state["redis"].get("pid"):
            self.stop_pid(state["redis"]["pid"])
        self.state_file.unlink(missing_ok=True)


def main(argv):
    command = argv[1] if len(argv) > 1 else "status"
    stack = Stack()
    try:
        if command == "up":
            print(json.dumps(stack.up(), indent=2))
        elif command == "status":
            print(json.dumps(stack.status(), indent=2))
        elif command == "down":
            stack.down()
            print(json.dumps({"running": False}))
        elif command == "scale":
            if len(argv) != 3 or not argv[2].isdigit():
                print(f"usage: scripts/stack scale N   (N app instances, 1 to {MAX_REPLICAS})", file=sys.stderr)
                return 2
            print(json.dumps(stack.scale(int(argv[2])), indent=2))
        elif command == "reload":
            stack.reload_haproxy()
            print(json.dumps(stack.status(), indent=2))
        else:
            print(__doc__, file=sys.stderr)
            return 2
    except (StackError, subprocess.CalledProcessError) as exc:
        print(f"scripts/stack {command}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
