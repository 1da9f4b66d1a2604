"""Fault scenarios against a real native stack (HAProxy, Redis, gunicorn instances, python-socketio clients):
tests/deployment/test_faults.py and test_bad_input.py run them small and assert on the results;
bench/measure_faults.py runs them at a larger size and writes the figures of docs/operations.md.
Scenarios: kill9, rolling_restart, redis_outage, redis_hang, redis_at_start, reload, bad_input.
Needs scripts/ on sys.path (the tests' conftest and bench/measure_faults.py put it there).
"""

from __future__ import annotations

import os
import random
import re
import secrets
import signal
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

import requests
import socketio
import websocket
from native_stack import ROOT, free_port, port_is_free, redis_server_argv, wait_for
from rolling_restart import restart_instance


def now():
    return time.monotonic()


def stack_env(**overrides):
    """A stack's environment for a test or a measurement: this one without the native stack's own variables,
    production, a new SECRET_KEY; `overrides` on top."""
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "STACK_DIR", "STACK_PORT", "APP_REPLICAS")}
    env.update(APP_ENV="production", SECRET_KEY=secrets.token_hex(32), LOG_LEVEL="info")
    env.update({k: str(v) for k, v in overrides.items()})
    return env


def percentile(values, q):
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def ms(seconds):
    return None if seconds is None else round(seconds * 1000, 1)


# --- clients ------------------------------------------------------------------------------------------
class LoadClient:
    """A python-socketio client that records connects, disconnects and every echo it makes."""

    def __init__(self, url, transports=None, ssl_verify=True, reconnection=True):
        self.url = url
        self.transports = transports
        self.sio = socketio.Client(
            reconnection=reconnection, reconnection_delay=0.5, reconnection_delay_max=1, ssl_verify=ssl_verify
        )
        self.lock = threading.Lock()
        self.connects = []
        self.disconnects = []
        self.echoes = []  # (start time, latency or None if it failed)
        self.events = []
        self.sio.on("connect", lambda: self._at(self.connects))
        self.sio.on("disconnect", lambda *_: self._at(self.disconnects))
        self.sio.on("*", self._event)

    def _at(self, times):
        with self.lock:
            times.append(now())

    def _event(self, event, *args):
        with self.lock:
            self.events.append((event, args[0] if args else None))

    def connect(self):
        self.sio.connect(self.url, transports=self.transports, wait_timeout=10)
        return self

    def echo(self, timeout=2):
        start = now()
        try:
            ok = self.sio.call("echo", start, timeout=timeout) == start
        except Exception:  # noqa: BLE001 - not connected, timeout: a failed echo
            ok = False
        with self.lock:
            self.echoes.append((start, now() - start if ok else None))
        return ok

    def whoami(self):
        return self.sio.call("whoami", timeout=5)

    def received(self, name, value=None, where=None):
        """True once an event `name` arrived with data == value (or for which where(data) is true)."""
        with self.lock:
            return any(event == name and (where(data) if where else data == value) for event, data in self.events)

    def first_connect_after(self, moment):
        with self.lock:
            return next((t for t in self.connects if t >= moment), None)

    def first_success_after(self, moment):
        with self.lock:
            return next((start + lat for start, lat in self.echoes if start >= moment and lat is not None), None)

    def failures_after(self, moment):
        with self.lock:
            return sum(1 for start, lat in self.echoes if start >= moment and lat is None)

    def close(self):
        try:
            self.sio.disconnect()
        except Exception:  # noqa: BLE001
            pass


class Load:
    """`count` clients (every `polling_every`-th one polling-only), each echoing every `interval` seconds."""

    def __init__(self, url, count, interval=0.2, polling_every=3, ssl_verify=True):
        self.clients = [
            LoadClient(url, ["polling"] if polling_every and i % polling_every == 0 else None, ssl_verify=ssl_verify)
            for i in range(count)
        ]
        self.interval = interval
        self.stopping = threading.Event()
        self.threads = []

    def start(self):
        for client in self.clients:
            client.connect()
        for client in self.clients:
            thread = threading.Thread(target=self._run, args=(client,), daemon=True)
            thread.start()
            self.threads.append(thread)
        return self

    def _run(self, client):
        time.sleep(random.random() * self.interval)
        while not self.stopping.is_set():
            client.echo()
            self.stopping.wait(self.interval)

    def placement(self, timeout=20):
        """{id(client): instance name}, once every client is connected (some may be reconnecting)."""
        wait_for(lambda: all(c.sio.connected for c in self.clients), timeout, "every client to be connected")
        found = {}
        deadline = now() + timeout
        while len(found) < len(self.clients) and now() < deadline:
            for client in self.clients:
                if id(client) not in found:
                    try:
                        found[id(client)] = client.whoami()
                    except Exception:  # noqa: BLE001 - it just lost its connection: ask again
                        time.sleep(0.1)
        return found

    def stop(self):
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=10)
        for client in self.clients:
            client.close()

    def latencies(self, start=0.0, end=float("inf"), clients=None):
        values = []
        for client in clients or self.clients:
            with client.lock:
                values += [lat for t, lat in client.echoes if start <= t < end and lat is not None]
        return values


class Handshakes:
    """New clients, one after another at `rate` per second: connect (polling, then WebSocket upgrade), one echo,
    disconnect. Counts the ones that fail anywhere."""

    def __init__(self, url, rate=5.0, ssl_verify=True):
        self.url = url
        self.rate = rate
        self.ssl_verify = ssl_verify
        self.ok = 0
        self.failed = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self.thread.start()
        return self

    def _run(self):
        while not self.stopping.is_set():
            started = now()
            client = socketio.Client(reconnection=False, ssl_verify=self.ssl_verify)
            try:
                client.connect(self.url, wait_timeout=10)
                if client.call("echo", "hi", timeout=5) != "hi":
                    raise RuntimeError("wrong echo")
                self.ok += 1
            except Exception as exc:  # noqa: BLE001 - any failure counts
                self.failed.append(f"{type(exc).__name__}: {exc}"[:120])
            finally:
                try:
                    client.disconnect()
                except Exception:  # noqa: BLE001
                    pass
            self.stopping.wait(max(0.0, 1 / self.rate - (now() - started)))

    def stop(self):
        self.stopping.set()
        self.thread.join(timeout=20)
        return {"ok": self.ok, "failed": len(self.failed), "errors": sorted(set(self.failed))[:5]}


# --- logs ---------------------------------------------------------------------------------------------
class LogWindow:
    """Lines the stack's app logs gained since start()."""

    def __init__(self, stack):
        self.stack = stack
        self.offsets = {}

    def start(self):
        for path in self.stack.logs.glob("app*.log"):
            self.offsets[path] = path.stat().st_size
        return self

    def lines(self):
        found = []
        for path in sorted(self.stack.logs.glob("app*.log")):
            with open(path, "rb") as log:
                log.seek(self.offsets.get(path, 0))
                found += log.read().decode(errors="replace").splitlines()
        return found

    def count(self, pattern):
        regex = re.compile(pattern)
        return sum(1 for line in self.lines() if regex.search(line))


# --- scenarios ----------------------------------------------------------------------------------------
def scenario_kill9(stack, clients=24, interval=0.2, timeout=30):
    """kill -9 one instance under a steady echo load; how long until HAProxy marks it DOWN and until every one
    of its clients echoes again, and whether anyone else noticed."""
    url = stack.status()["url"]
    load = Load(url, clients, interval).start()
    try:
        time.sleep(1)
        placement = load.placement()
        victim = placement[id(load.clients[0])]
        app = next(a for a in stack.status()["apps"] if a["name"] == victim)
        moved = [c for c in load.clients if placement[id(c)] == victim]
        stayed = [c for c in load.clients if placement[id(c)] != victim]
        killed_at = now()
        os.killpg(app["pid"], signal.SIGKILL)
        marked_down = None
        while now() - killed_at < timeout:
            if marked_down is None and stack.server_states().get(victim, "").startswith("DOWN"):
                marked_down = now() - killed_at
            back = [c.first_success_after(killed_at) for c in moved]
            if marked_down is not None and all(back):
                break
            time.sleep(0.05)
        back = [c.first_success_after(killed_at) for c in moved]
        recovered = [t - killed_at for t in back if t]
        time.sleep(1)
        return {
            "clients": clients,
            "moved_clients": len(moved),
            "echo_interval_s": interval,
            "marked_down_s": None if marked_down is None else round(marked_down, 2),
            "recovered_clients": len(recovered),
            "recovery_max_s": round(max(recovered), 2) if recovered else None,
            "recovery_median_s": round(statistics.median(recovered), 2) if recovered else None,
            "others_disconnects": sum(1 for c in stayed for t in c.disconnects if t >= killed_at),
            "others_failed_echoes": sum(c.failures_after(killed_at) for c in stayed),
        }
    finally:
        load.stop()


def scenario_rolling_restart(stack, clients=24, interval=0.2, handshake_rate=5.0, timeout=60):
    """Restarts every instance, one by one (scripts/rolling-restart), under a steady echo load and a stream
    of new clients."""
    url = stack.status()["url"]
    logs = LogWindow(stack).start()
    load = Load(url, clients, interval).start()
    handshakes = Handshakes(url, handshake_rate).start()
    instances = []
    try:
        time.sleep(1)
        state = stack.load()
        started = now()
        for app in state["apps"]:
            placement = load.placement()
            on_it = [c for c in load.clients if placement[id(c)] == app["name"]]
            sigterm_at = now()
            result = restart_instance(stack, state, app, timeout)
            cut = sorted(t - sigterm_at for c in on_it for t in c.disconnects if t >= sigterm_at)
            result.update(
                clients_on_it=len(on_it),
                first_close_s=round(cut[0], 2) if cut else None,
                last_close_s=round(cut[-1], 2) if cut else None,
                closes=len(cut),
            )
            instances.append(result)
        total = now() - started
        wait_for(lambda: all(c.sio.connected for c in load.clients), timeout, "every client to be connected")
        time.sleep(2 * interval + 1)
        gaps, echo_gaps = [], []  # per cut: until connected again, until an echo succeeded again
        for client in load.clients:
            for cut in client.disconnects:
                if cut >= started:
                    gaps.append((client.first_connect_after(cut) or now()) - cut)
                    echo_gaps.append((client.first_success_after(cut) or now()) - cut)
        final_echoes = sum(1 for c in load.clients if c.echo())
        grace = int(stack.env.get("GRACEFUL_TIMEOUT") or 20)
        return {
            "clients": clients,
            "echo_interval_s": interval,
            "instances": instances,
            "total_s": round(total, 2),
            "graceful_timeout_s": grace,
            "slowest_exit_s": max(i["stopped_after_s"] for i in instances),
            "handshakes": handshakes.stop(),
            "reconnects": len(gaps),
            "back_max_s": round(max(gaps), 2) if gaps else None,
            "back_median_s": round(statistics.median(gaps), 2) if gaps else None,
            "echo_back_max_s": round(max(echo_gaps), 2) if echo_gaps else None,
            "clients_ok_at_end": final_echoes,
            "graceful_timeout_warnings": logs.count("graceful timeout"),
        }
    finally:
        handshakes.stopping.set()
        load.stop()


def restart_redis(stack, state):
    """A new redis-server on the old port (the stack's `down` stops it: its pid goes into the state)."""
    port = state["redis"]["port"]
    wait_for(lambda: port_is_free(port), 10, "the old Redis port to be free")
    pid = stack.spawn(
        "redis",
        redis_server_argv(port, stack.dir),
        dict(os.environ),
    )
    state["redis"]["pid"] = pid
    stack.save(state)
    wait_for(lambda: not port_is_free(port), 10, "redis-server to listen")
    return pid


def broadcast_reaches(sender, receivers, timeout):
    token = uuid.uuid4().hex
    sender.sio.call("broadcast", {"token": token}, timeout=5)
    deadline = now() + timeout
    while now() < deadline:
        if all(r.received("broadcast", {"token": token}) for r in receivers):
            return True
        time.sleep(0.05)
    return [r.received("broadcast", {"token": token}) for r in receivers]


def scenario_redis_outage(stack, clients=9, outage_s=5.0, emits_during=50):
    """Kills Redis, checks what still works, starts it again on the same port and times the resumption."""
    url = stack.status()["url"]
    logs = LogWindow(stack).start()
    group = [LoadClient(url).connect() for _ in range(clients)]
    try:
        by_instance = {}
        for client in group:
            by_instance.setdefault(client.whoami(), []).append(client)
        sender = group[0]
        sender_instance = sender.whoami()
        others = [c for c in group if c.whoami() != sender_instance]
        local = [c for c in by_instance[sender_instance]]
        baseline = broadcast_reaches(sender, group, 5) is True
        state = stack.load()
        os.killpg(state["redis"]["pid"], signal.SIGKILL)
        down_at = now()
        time.sleep(0.5)
        echoes_ok = sum(1 for c in group if c.echo())
        room = f"room-{uuid.uuid4().hex[:6]}"
        for member in local:
            member.sio.call("join", {"room": room}, timeout=5)
        say = sender.sio.call("say", {"room": room, "message": "local"}, timeout=5)
        time.sleep(1)
        local_room_ok = sum(
            1 for m in local if m.received("message", where=lambda d: isinstance(d, dict) and d.get("room") == room)
        )
        cross = broadcast_reaches(sender, others, 1)
        cross_during = len(others) if cross is True else sum(cross)
        for i in range(emits_during):
            group[i % len(group)].sio.call("broadcast", {"n": i}, timeout=5)
        time.sleep(max(0.0, outage_s - (now() - down_at)))
        restart_redis(stack, state)
        restarted_at = now()
        resumed = None
        while now() - restarted_at < 30:
            if broadcast_reaches(sender, group, 0.25) is True:
                resumed = now() - restarted_at
                break
        time.sleep(1)
        alive = all(a["alive"] for a in stack.status()["apps"])
        return {
            "clients": clients,
            "outage_s": round(restarted_at - down_at, 1),
            "baseline_cross_instance": baseline,
            "echoes_ok_during": f"{echoes_ok}/{clients}",
            "local_room_delivery_during": f"{local_room_ok}/{len(local)}",
            "say_ack_during": say,
            "cross_instance_delivered_during": f"{cross_during}/{len(others)}",
            "resumed_after_s": None if resumed is None else round(resumed, 2),
            "instances_alive": alive,
            "tracebacks_logged": logs.count(r"Traceback"),
            "queue_warnings_logged": logs.count(r"WARNING realtime\.queue"),
            "emits_during": emits_during,
        }
    finally:
        for client in group:
            client.close()


def scenario_redis_hang(stack, clients=6, hang_s=6.0, rounds=6):
    """Hangs Redis (SIGSTOP: its connections stay open, nothing answers) while clients of every instance
    broadcast, then lets it go on (SIGCONT). Each round, one client's broadcast (an emit to every instance: a
    publish) is sent while every client echoes; its ack comes once the handler's publish has returned.
    Deliveries are counted per (broadcast, receiver): local ones are to the clients of the sender's instance."""
    url = stack.status()["url"]
    logs = LogWindow(stack).start()
    group = [LoadClient(url).connect() for _ in range(clients)]
    try:
        where = {id(client): client.whoami() for client in group}
        instances = sorted(set(where.values()))
        callers = [next(c for c in group if where[id(c)] == name) for name in instances]
        baseline = broadcast_reaches(callers[0], group, 5) is True
        state = stack.load()
        pid = state["redis"]["pid"]
        token = uuid.uuid4().hex

        def hung_broadcasts(client):
            """(n, sender's instance) of the broadcasts of the hang this client got."""
            with client.lock:
                return {
                    (data["n"], data["from"])
                    for event, data in client.events
                    if event == "broadcast" and isinstance(data, dict) and data.get("hang") == token
                }

        def duplicates(client):
            with client.lock:
                got = [
                    data["n"]
                    for event, data in client.events
                    if event == "broadcast" and isinstance(data, dict) and data.get("hang") == token
                ]
            return len(got) - len(set(got))

        def deliveries(local):
            got = sum(1 for c in group for n, sent_from in hung_broadcasts(c) if (sent_from == where[id(c)]) == local)
            expected = sum(
                1
                for i in range(rounds)
                for c in group
                if (where[id(c)] == where[id(callers[i % len(callers)])]) == local
            )
            return got, expected

        os.kill(pid, signal.SIGSTOP)
        hung_at = now()
        acks, echoes = [], []
        try:
            for i in range(rounds):
                caller = callers[i % len(callers)]
                started, answer = now(), {}
                data = {"hang": token, "n": i, "from": where[id(caller)]}

                def call(caller=caller, data=data, started=started, answer=answer):
                    try:
                        answer["ok"] = caller.sio.call("broadcast", data, timeout=20) == {"ok": True}
                    except Exception as exc:  # noqa: BLE001 - a failed call
                        answer["error"] = type(exc).__name__
                    answer["s"] = now() - started

                thread = threading.Thread(target=call, daemon=True)
                thread.start()
                time.sleep(0.1)  # the handler now waits on its publish (or has dropped it: Redis known down)
                echoes += [c.echo(timeout=5) for c in group]
                thread.join(timeout=25)
                acks.append(answer.get("s") if answer.get("ok") else None)
            time.sleep(max(0.0, hang_s - (now() - hung_at)))
            local_during, cross_during = deliveries(local=True), deliveries(local=False)
        finally:
            os.kill(pid, signal.SIGCONT)
        resumed_at = now()
        resumed = None
        while now() - resumed_at < 30:
            if broadcast_reaches(callers[-1], group, 0.25) is True:
                resumed = now() - resumed_at
                break
        time.sleep(1)
        return {
            "clients": clients,
            "instances": len(instances),
            "hang_s": round(resumed_at - hung_at, 1),
            "baseline_cross_instance": baseline,
            "broadcast_acks_s": [None if a is None else round(a, 2) for a in acks],
            "broadcast_ack_max_s": None if None in acks else round(max(acks), 2),
            "echoes_ok_during": f"{sum(echoes)}/{len(echoes)}",
            "local_delivery_during": "{}/{}".format(*local_during),
            "cross_instance_delivered_during": "{}/{}".format(*cross_during),
            # a publish that timed out was already written to Redis' socket: Redis may run it once it goes on
            "cross_instance_delivered_late": deliveries(local=False)[0] - cross_during[0],
            # a broadcast a client got twice (say, locally during the hang, then late from Redis)
            "duplicate_deliveries": sum(duplicates(c) for c in group),
            "resumed_after_s": None if resumed is None else round(resumed, 2),
            "instances_alive": all(a["alive"] for a in stack.status()["apps"]),
            "tracebacks_logged": logs.count(r"Traceback"),
            "queue_warnings_logged": logs.count(r"WARNING realtime\.queue"),
        }
    finally:
        for client in group:
            client.close()


def scenario_redis_at_start(python, wait_s=20, start_redis_after=3.0, tmp=None):
    """An instance started while Redis is down: it waits (logging) instead of crash-looping, and is ready soon
    after Redis appears. Runs one gunicorn and one redis-server of its own."""
    tmp = Path(tmp or tempfile.mkdtemp(prefix="redis-at-start-"))
    redis_port, app_port = free_port(), free_port()
    env = stack_env(
        REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
        REDIS_WAIT_SECONDS=wait_s,
        BIND=f"127.0.0.1:{app_port}",
        INSTANCE_NAME="late",
        PYTHONUNBUFFERED=1,
    )
    log_path = tmp / "app.log"
    gunicorn = str(Path(python).with_name("gunicorn"))
    procs = []
    try:
        with open(log_path, "wb") as log:
            app = subprocess.Popen(
                [gunicorn, "--config", str(ROOT / "gunicorn.conf.py")],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        procs.append(app)
        started = now()
        time.sleep(start_redis_after)
        waiting_logged = "waiting for the message queue" in log_path.read_text(errors="replace")
        alive_while_waiting = app.poll() is None
        ready_before = ready(app_port)
        redis = subprocess.Popen(
            redis_server_argv(redis_port, tmp),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        procs.append(redis)
        redis_at = now()
        became_ready = None
        while now() - redis_at < wait_s + 10 and app.poll() is None:
            if ready(app_port):
                became_ready = now() - redis_at
                break
            time.sleep(0.1)
        text = log_path.read_text(errors="replace")
        return {
            "redis_started_after_s": round(redis_at - started, 1),
            "alive_while_waiting": alive_while_waiting,
            "waiting_logged": waiting_logged,
            "ready_before_redis": ready_before,
            "ready_after_redis_s": None if became_ready is None else round(became_ready, 2),
            "worker_boots": text.count("Booting worker"),
            "tracebacks_logged": text.count("Traceback"),
        }
    finally:
        for proc in procs:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)


def ready(port):
    try:
        return requests.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200
    except requests.RequestException:
        return False


def scenario_reload(stack, change_config, clients=12, observe_s=10.0, rate=8.0):
    """HAProxy reload with a changed configuration under established clients and a stream of new ones."""
    url = stack.status()["url"]
    load = Load(url, clients, interval=0.5).start()
    handshakes = Handshakes(url, rate).start()
    try:
        time.sleep(1)
        change_config()
        reload_at = now()
        stack.reload_haproxy()
        reload_s = now() - reload_at
        time.sleep(observe_s)
        new_config = requests.get(url + "/healthz", timeout=5).headers.get("X-Config-Generation")
        websocket_clients = [c for c in load.clients if c.transports is None]
        return {
            "clients": clients,
            "observed_s": observe_s,
            "reload_s": round(reload_s, 2),
            "new_config_active": new_config is not None,
            "handshakes": handshakes.stop(),
            "established_disconnects": sum(1 for c in load.clients for t in c.disconnects if t >= reload_at),
            "websocket_clients": len(websocket_clients),
            "failed_echoes": sum(c.failures_after(reload_at) for c in load.clients),
        }
    finally:
        handshakes.stopping.set()
        load.stop()


# --- bad input ----------------------------------------------------------------------------------------
HANDSHAKE = "/socket.io/?EIO=4&transport=polling"

# (name, Engine.IO payload) sent on a connected session; the expected outcome is checked by the tests.
CORPUS = [
    ("not JSON", "42not json"),
    ("truncated JSON", '42["echo",'),
    ("empty event array", "42[]"),
    ("event object", "42{}"),
    ("event without data", "42"),
    ("deeply nested JSON", "42[" + "[" * 20000 + "]" * 20000 + "]"),
    ("deeply nested Engine.IO JSON", "4" + "[" * 20000 + "]" * 20000),
    ("unknown Socket.IO type", "49"),
    ("Socket.IO type not a digit", "4x"),
    ("unknown namespace", '42/nope,["echo",1]'),
    ("binary placeholder out of range", '451-["echo",{"_placeholder":true,"num":7}]'),
    ("ack for nothing", '43999["x"]'),
    ("CONNECT_ERROR from a client", "44[]"),
    ("event name not a string", "42[123,1]"),
    ("empty Engine.IO packet", ""),
    ("Engine.IO type not a digit", "x"),
    ("unknown Engine.IO type", "9"),
    ("upgrade without a transport", "5"),
]


class Session:
    """A raw Engine.IO long-polling session, Socket.IO-connected."""

    def __init__(self, url):
        self.http = requests.Session()
        reply = self.http.get(url + HANDSHAKE, timeout=5)
        self.sid = re.search(r'"sid":"([^"]+)"', reply.text).group(1)
        self.endpoint = f"{url}/socket.io/?EIO=4&transport=polling&sid={self.sid}"
        self.post("40")
        self.get()

    def post(self, body):
        return self.http.post(self.endpoint, data=body.encode() if isinstance(body, str) else body, timeout=10)

    def get(self, timeout=10):
        return self.http.get(self.endpoint, timeout=timeout)


def polling_outcome(url, payload):
    """What a client sees after posting `payload`: the POST status, then what an echo returns."""
    session = Session(url)
    try:
        reply = session.post(payload)
    except requests.RequestException as exc:
        return {"post": type(exc).__name__}
    outcome = {"post": reply.status_code}
    if reply.status_code != 200:
        return outcome
    follow = session.post('421["echo","still here"]')
    outcome["echo_post"] = follow.status_code
    if follow.status_code == 200:
        # the error event and the echo's ack are sent by separate greenlets: they may come in separate polls
        text = session.get().text
        for _ in range(2):
            if '"still here"' in text:
                break
            try:  # a later poll: short, since some packets legitimately leave no echo behind
                text += session.get(timeout=3).text
            except requests.RequestException:
                break
        outcome["error_event"] = '"error"' in text
        outcome["echo_ok"] = '"still here"' in text
    return outcome


def ws_connect(url):
    ws = websocket.create_connection(url.replace("http", "ws", 1) + "/socket.io/?EIO=4&transport=websocket", timeout=5)
    ws.recv()
    ws.send("40")
    ws.recv()
    return ws


def websocket_outcome(url, payload):
    ws = ws_connect(url)
    try:
        ws.send(payload) if isinstance(payload, str) else ws.send_binary(payload)
        ws.send('421["echo","still here"]')
        seen = []
        deadline = now() + 5
        while now() < deadline:
            frame = ws.recv()
            if not frame:
                return {"closed": True, "error_event": any('"error"' in f for f in seen)}
            seen.append(frame)
            if "still here" in frame:
                return {"closed": False, "echo_ok": True, "error_event": any('"error"' in f for f in seen)}
    except websocket.WebSocketTimeoutException:
        return {"closed": False, "echo_ok": False, "error_event": any('"error"' in f for f in seen)}
    except (websocket.WebSocketConnectionClosedException, OSError):
        return {"closed": True, "error_event": any('"error"' in f for f in seen)}
    finally:
        ws.close()
    return {"closed": False, "echo_ok": False}


def fuzz_payloads(count, seed):
    rng = random.Random(seed)
    alphabet = '0123456789[]{}",:/-_abcxyz\\\x1e\x00é'
    pieces = ["4", "42", "43", "45", "451-", '["echo"', '{"_placeholder":true,"num":', "/x,", "[" * 50, "null"]
    for _ in range(count):
        if rng.random() < 0.5:
            yield "".join(rng.choice(pieces) for _ in range(rng.randint(1, 6)))
        else:
            yield "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))


def flood(url, events=3000):
    """One client emits `events` echo events without waiting; returns what it got back."""
    # no reconnection: once the server cuts the flooder off, `connected` stays False and says so
    client = LoadClient(url, transports=["websocket"], reconnection=False).connect()
    acks = {"ok": 0, "limited": 0}
    lock = threading.Lock()

    def ack(*args):
        with lock:
            if args and isinstance(args[0], dict) and "rate limited" in str(args[0].get("error", "")):
                acks["limited"] += 1
            else:
                acks["ok"] += 1

    try:
        for i in range(events):
            if not client.sio.connected:
                break
            try:
                client.sio.emit("echo", i, callback=ack)
            except Exception:  # noqa: BLE001 - disconnected mid-flood
                break
        # wait until every ack is in (or none came for 3s): a limit-free flood takes a while to serve
        last, quiet_since = -1, now()
        while now() - quiet_since < 3 and acks["ok"] + acks["limited"] < events:
            seen = acks["ok"] + acks["limited"]
            if seen != last:
                last, quiet_since = seen, now()
            time.sleep(0.1)
        return {
            "sent": events,
            "acked": acks["ok"],
            "refused_acks": acks["limited"],
            "error_events": sum(1 for e, _ in client.events if e == "error"),
            "disconnected": not client.sio.connected,
            "disconnects": len(client.disconnects),
        }
    finally:
        client.close()


def join_many(url, rooms=1000):
    client = LoadClient(url, transports=["websocket"]).connect()
    try:
        ok = refused = 0
        first_error = None
        for i in range(rooms):
            reply = client.sio.call("join", {"room": f"r{i}"}, timeout=10)
            if reply.get("ok"):
                ok += 1
            else:
                refused += 1
                first_error = first_error or reply.get("error")
            if i % 40 == 39:
                time.sleep(1)  # stay under the event rate limit: this measures the room cap alone
        return {"asked": rooms, "joined": ok, "refused": refused, "error": first_error}
    finally:
        client.close()


def scenario_bad_input(stack, fuzz=300, seed=7, flood_events=3000, rooms=120):
    """Throws the corpus (polling and WebSocket), random fuzz, an event flood, many room joins and oversized
    payloads at ONE process while two well-behaved clients of that process echo every 50 ms."""
    status = stack.status()
    url = status["url"]
    pids = [a["pid"] for a in status["apps"]]
    logs = LogWindow(stack).start()
    victims = Load(url, 2, interval=0.05, polling_every=2).start()
    try:
        time.sleep(2)
        attack_start = now()
        results = {"polling": {}, "websocket": {}}
        for name, payload in CORPUS:
            results["polling"][name] = polling_outcome(url, payload)
            results["websocket"][name] = websocket_outcome(url, payload)
        fuzz_closed = 0
        ws = ws_connect(url)
        for payload in fuzz_payloads(fuzz, seed):
            try:
                ws.send(payload)
            except (websocket.WebSocketConnectionClosedException, OSError):
                fuzz_closed += 1
                ws = ws_connect(url)
        ws.close()
        limit = int(stack.env.get("MAX_HTTP_BUFFER_SIZE") or 1_000_000)
        big = '42["echo","' + "x" * (limit + 10) + '"]'
        session = Session(url)
        results["oversized"] = {
            "polling_status": session.post(big).status_code,
            "websocket": websocket_outcome(url, big),
            "under_limit_echo": websocket_outcome(url, '421["echo","' + "y" * (limit // 2) + '"]').get("echo_ok"),
        }
        results["flood"] = flood(url, flood_events)
        results["rooms"] = join_many(url, rooms)
        attack_end = now()
        time.sleep(1)
        before = victims.latencies(0, attack_start)
        during = victims.latencies(attack_start, attack_end)
        failed = sum(1 for c in victims.clients for t, lat in c.echoes if t >= attack_start and lat is None)
        health = requests.get(url + "/healthz", timeout=5).status_code
        results["victims"] = {
            "echoes_before": len(before),
            "echoes_during": len(during),
            "failed_during": failed,
            "disconnects": sum(len(c.disconnects) for c in victims.clients),
            "p50_before_ms": ms(percentile(before, 0.5)),
            "p50_during_ms": ms(percentile(during, 0.5)),
            "p99_during_ms": ms(percentile(during, 0.99)),
            "max_during_ms": ms(max(during) if during else None),
        }
        results["process"] = {
            "same_pids": pids == [a["pid"] for a in stack.status()["apps"]],
            "alive": all(a["alive"] for a in stack.status()["apps"]),
            "healthz": health,
            "worker_boots": sum(
                open(p, errors="replace").read().count("Booting worker") for p in stack.logs.glob("app*.log")
            ),
            "tracebacks_logged": logs.count("Traceback"),
            "limit_warnings": logs.count(r"realtime\.limits"),
        }
        results["fuzz"] = {"payloads": fuzz, "seed": seed, "connections_closed": fuzz_closed}
        results["attack_s"] = round(attack_end - attack_start, 1)
        return results
    finally:
        victims.stop()


def reload_config_copy(stack_factory):
    """A stack whose HAProxy reads a copy of haproxy.cfg, and a function that changes the copy."""
    import native_stack

    copy = Path(tempfile.mkdtemp(prefix="haproxy-cfg-")) / "haproxy.cfg"
    copy.write_text(native_stack.HAPROXY_CFG.read_text())
    original = native_stack.HAPROXY_CFG
    native_stack.HAPROXY_CFG = copy
    try:
        stack = stack_factory()
    except Exception:
        native_stack.HAPROXY_CFG = original
        raise

    def change():
        text = copy.read_text()
        marker = "    http-response del-header Server\n"
        text = text.replace(marker, marker + "    http-response set-header X-Config-Generation 2\n", 1)
        copy.write_text(text)

    def restore():
        native_stack.HAPROXY_CFG = original

    return stack, change, restore
