"""HAProxy's per-address limits (haproxy/haproxy.cfg, docs/operations.md#per-address-limits) on a real native
stack with real clients: HAProxy's own counts (its stick tables, sampled every 200 ms), clients bound to a source
address, and the scenarios. tests/deployment/test_per_address_limits.py runs them with the shipped defaults;
bench/measure_limits.py runs them with every limit lifted, which is what the defaults were chosen from.

Scenarios: polling clients (Node socket.io-client clients on long-polling from one address, paced or unpaced),
reconnect after a kill -9 (every client of one instance comes back through HAProxy to the other one) and flood
(raw handshakes from one address as fast as a thread pool can, while a bystander on another one echoes).
Needs scripts/ on sys.path (the tests' conftest and bench/measure_limits.py put it there).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import requests
import socketio
from native_stack import ROOT, haproxy_command, haproxy_stats

NODE_ECHOERS = ROOT / "tests" / "deployment" / "node" / "sio-echoers.mjs"
HANDSHAKE = "/socket.io/?EIO=4&transport=polling"
# HAProxy's rule before issue #15: TCP connects per 10s per address (500) and open connections (1000) only
OLD_RULE = {"HAPROXY_PER_IP_SESSION_RATE": "100000000", "HAPROXY_PER_IP_CONN_RATE": "500"}


def shipped_default(name):
    """A per-address limit's default, as haproxy/haproxy.cfg gives it ("${NAME-default}")."""
    return int(re.search(r"\$\{" + name + r"-(\d+)\}", (ROOT / "haproxy" / "haproxy.cfg").read_text()).group(1))


def node_available():
    return (
        bool(shutil.which("node"))
        and (ROOT / "tests" / "deployment" / "node" / "node_modules" / "socket.io-client").is_dir()
    )


# --- HAProxy's own counts ---------------------------------------------------------------------------------------
def runtime(stack, command):
    return haproxy_command(stack.load()["haproxy"]["socket"], command)


def frontend_stats(stack):
    """The `public` frontend's row of `show stat`: dreq (requests denied by rules: the 429s), conn_tot, req_tot."""
    rows = haproxy_stats(stack.load()["haproxy"]["socket"])
    row = next(r for r in rows if r["pxname"] == "public" and r["svname"] == "FRONTEND")
    return {key: int(row[key] or 0) for key in ("dreq", "conn_tot", "req_tot", "hrsp_4xx")}


ENTRY = re.compile(r"key=(\S+) .*")
COUNTER = re.compile(r"(\w+)(?:\(\d+\))?=(\d+)")


def table(stack, name):
    """{key: {counter: value}} of one stick table (public: conn_cur, conn_rate; per_address_sessions:
    http_req_rate), keys as HAProxy shows them (IPv4 clients as ::ffff:a.b.c.d)."""
    entries = {}
    for line in runtime(stack, f"show table {name}").splitlines():
        match = ENTRY.search(line)
        if match:
            entries[match.group(1)] = {k: int(v) for k, v in COUNTER.findall(line) if k not in ("use", "exp", "shard")}
    return entries


def key(address):
    return address if ":" in address else f"::ffff:{address}"


class Sampler:
    """Samples HAProxy's stick tables and frontend counters every `interval` s in a thread; keeps, per client
    address, the highest open connections (conn_cur), new connections per 10 s (conn_rate) and new sessions
    per 10 s (handshakes), and the highest new connections in one second on the frontend."""

    def __init__(self, stack, interval=0.2):
        self.stack = stack
        self.interval = interval
        self.peaks = {}
        self.connects_per_s = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self.start_stats = frontend_stats(self.stack)
        self.thread.start()
        return self

    def _peak(self, address, counter, value):
        per_address = self.peaks.setdefault(address, {})
        per_address[counter] = max(per_address.get(counter, 0), value)

    def _run(self):
        history = []  # (time, conn_tot)
        while not self.stopping.wait(self.interval):
            try:
                for address, counters in table(self.stack, "public").items():
                    self._peak(address, "open_connections", counters.get("conn_cur", 0))
                    self._peak(address, "connects_per_10s", counters.get("conn_rate", 0))
                for address, counters in table(self.stack, "per_address_sessions").items():
                    self._peak(address, "sessions_per_10s", counters.get("http_req_rate", 0))
                history.append((time.monotonic(), frontend_stats(self.stack)["conn_tot"]))
            except OSError:  # HAProxy busy or reloading: the next sample
                continue
            while len(history) > 1 and history[-1][0] - history[1][0] >= 1.0:
                history.pop(0)
            if history[-1][0] - history[0][0] >= 1.0:
                span = history[-1][0] - history[0][0]
                self.connects_per_s = max(self.connects_per_s, round((history[-1][1] - history[0][1]) / span))

    def stop(self):
        self.stopping.set()
        self.thread.join(timeout=5)
        end = frontend_stats(self.stack)
        return {
            "per_address": self.peaks,
            "peak_connects_per_s": self.connects_per_s,
            "denied_429": end["dreq"] - self.start_stats["dreq"],
            "connections": end["conn_tot"] - self.start_stats["conn_tot"],
            "requests": end["req_tot"] - self.start_stats["req_tot"],
        }


# --- clients bound to a source address ---------------------------------------------------------------------------
class SourceAddressAdapter(requests.adapters.HTTPAdapter):
    """Every connection of this adapter leaves from `address` (any 127.x.y.z is local on Linux)."""

    def __init__(self, address, **kwargs):
        self.address = address
        super().__init__(**kwargs)

    def init_poolmanager(self, *args, **kwargs):
        kwargs["source_address"] = (self.address, 0)
        super().init_poolmanager(*args, **kwargs)


def session_from(address):
    session = requests.Session()
    session.trust_env = False  # no proxy from the environment between us and the loopback
    adapter = SourceAddressAdapter(address)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def raw_get(url, path, source, headers=(), timeout=5):
    """One GET on a new connection from `source` (closed after the reply); the status code, 0 on a network error."""
    host, port = url.removeprefix("http://").split(":")
    lines = [f"GET {path} HTTP/1.1", "Host: x", "Connection: close", *headers, "", ""]
    try:
        with socket.create_connection((host, int(port)), timeout=timeout, source_address=(source, 0)) as sock:
            sock.sendall("\r\n".join(lines).encode())
            reply = b""
            while b"\r\n" not in reply:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                reply += chunk
            return int(reply.split(b" ", 2)[1])
    except (OSError, IndexError, ValueError):
        return 0


def run_node_echoers(url, on_connected=None, **options):
    """tests/deployment/node/sio-echoers.mjs in one Node process; on_connected(line) is called once every client has
    connected. Returns its summary (plus the connected line as `ready`)."""
    bound = options["durationMs"] / 1000 + 20
    proc = subprocess.Popen(
        ["node", str(NODE_ECHOERS), json.dumps({"url": url, **options})],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    timer = threading.Timer(bound, proc.kill)
    timer.start()
    try:
        ready, summary = None, None
        for line in proc.stdout:
            data = json.loads(line)
            if "connected" in data and "echoes" not in data:
                ready = data
                if on_connected:
                    on_connected(data)
            else:
                summary = data
        proc.wait()
    finally:
        timer.cancel()
    if summary is None:
        raise RuntimeError(f"the Node clients printed no summary (exit status {proc.returncode})")
    summary["ready"] = ready
    return summary


class Bystander:
    """A python-socketio client on long-polling from its own source address, echoing every `interval` s in a
    thread; records (time, latency or None) for every echo, and its disconnects."""

    def __init__(self, url, address, interval=0.05):
        self.url = url
        self.client = socketio.Client(reconnection=False, http_session=session_from(address))
        self.interval = interval
        self.echoes = []
        self.disconnects = 0
        self.stopping = threading.Event()
        self.client.on("disconnect", self._disconnected)
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _disconnected(self, *_):
        if not self.stopping.is_set():  # not its own disconnect at the end
            self.disconnects += 1

    def start(self):
        self.client.connect(self.url, transports=["polling"], wait_timeout=10)
        self.thread.start()
        return self

    def _run(self):
        while not self.stopping.is_set():
            sent = time.monotonic()
            try:
                ok = self.client.call("echo", "bystander", timeout=5) == "bystander"
            except Exception:  # noqa: BLE001 - a failed echo is recorded, not raised
                ok = False
            self.echoes.append((sent, time.monotonic() - sent if ok else None))
            self.stopping.wait(max(0.0, sent + self.interval - time.monotonic()))

    def between(self, start, end):
        """{echoes, failed, p50_ms, p99_ms, max_ms} of the echoes sent in [start, end)."""
        picked = [lat for t, lat in self.echoes if start <= t < end]
        done = sorted(lat for lat in picked if lat is not None)

        def at(q):
            return round(1000 * done[min(len(done) - 1, int(q * len(done)))], 1) if done else None

        return {
            "echoes": len(done),
            "failed": len(picked) - len(done),
            "p50_ms": at(0.5),
            "p99_ms": at(0.99),
            "max_ms": round(1000 * done[-1], 1) if done else None,
        }

    def stop(self):
        self.stopping.set()
        self.thread.join(timeout=10)
        self.client.disconnect()


def handshake_flood(url, source="127.0.0.2", total=20000, max_s=3.0, threads=48):
    """Raw Engine.IO handshakes (GET, a new connection each) from `source`, as fast as `threads` threads manage,
    at most `total` of them or for `max_s` seconds. Returns counts by status, the rate, and when (seconds after
    the start) the first 429 came."""
    started = time.monotonic()
    deadline = started + max_s
    lock = threading.Lock()
    statuses, first_429 = {}, []
    sent = [0]

    def worker():
        while time.monotonic() < deadline:
            with lock:
                if sent[0] >= total:
                    return
                sent[0] += 1
            status = raw_get(url, HANDSHAKE, source)
            with lock:
                statuses[status] = statuses.get(status, 0) + 1
                if status == 429 and not first_429:
                    first_429.append(time.monotonic() - started)

    with ThreadPoolExecutor(threads) as pool:
        for _ in range(threads):
            pool.submit(worker)
    elapsed = time.monotonic() - started
    done = sum(statuses.values())
    return {
        "requests": done,
        "seconds": round(elapsed, 2),
        "per_s": round(done / elapsed),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "first_429_s": round(first_429[0], 2) if first_429 else None,
    }


# --- scenarios ---------------------------------------------------------------------------------------------------
def scenario_polling_clients(stack, clients=200, duration_s=60, echo_every_ms=500, local_address=None):
    """`clients` Node socket.io-client clients on long-polling (a new TCP connection for every request) from one
    address, each echoing every `echo_every_ms` (0: as fast as acks return) for `duration_s`."""
    sampler = Sampler(stack).start()
    options = {"clients": clients, "durationMs": int(duration_s * 1000), "echoEveryMs": echo_every_ms}
    if local_address:
        options["localAddress"] = local_address
    try:
        result = run_node_echoers(stack.status()["url"], **options)
    finally:
        counted = sampler.stop()
    result.pop("reconnectTimes", None)
    return {"node": result, "haproxy": counted, "echoes_per_s": round(result["echoes"] / duration_s)}


def scenario_reconnect_after_kill(stack, clients=200, settle_s=12, after_s=15, ramp_s=0):
    """A 2-instance stack: `clients` Node clients (long-polling, reconnection after 0.5-1 s as browsers would
    retry quickly) all connect to app1 while app2 is drained; app2 is made ready, and `settle_s` later (so
    that their first handshakes have left HAProxy's 10 s window) app1 is killed with kill -9. Every client
    reconnects through HAProxy to app2. Reports when, and what HAProxy counted. `ramp_s` spreads the first
    connects over that many seconds (0: all at once)."""
    state = stack.load()
    names = [app["name"] for app in state["apps"]]
    assert len(names) == 2, "needs a 2-instance stack"
    victim, other = names
    stack.runtime(state, f"set server app/{other} state drain")
    sampler = Sampler(stack).start()
    killed = {}

    def kill_later(_ready):
        def run():
            stack.runtime(state, f"set server app/{other} state ready")
            time.sleep(settle_s)
            killed["at"] = time.time()
            os.killpg(next(a["pid"] for a in state["apps"] if a["name"] == victim), signal.SIGKILL)

        threading.Thread(target=run, daemon=True).start()

    try:
        result = run_node_echoers(
            stack.status()["url"],
            on_connected=kill_later,
            clients=clients,
            durationMs=int((ramp_s + settle_s + after_s) * 1000) + 3000,
            rampMs=int(ramp_s * 1000),
            echoEveryMs=1000,
            reconnection=True,
            reconnectionDelay=500,
            reconnectionDelayMax=1000,
        )
    finally:
        counted = sampler.stop()
    times = sorted(t / 1000 - killed["at"] for t in result.pop("reconnectTimes") if "at" in killed)
    return {
        "node": result,
        "haproxy": counted,
        "reconnected": len(times),
        "reconnect_median_s": round(statistics.median(times), 2) if times else None,
        "reconnect_max_s": round(times[-1], 2) if times else None,
        "killed": victim,
    }


def scenario_flood(stack, flood_from="127.0.0.2", bystander_from="127.0.0.3", before_s=3.0, **flood):
    """A handshake flood from one address while a bystander on another one echoes every 50 ms: the flood's
    statuses, how soon the first 429 came, and the bystander's echo latency before and during the flood."""
    url = stack.status()["url"]
    bystander = Bystander(url, bystander_from).start()
    try:
        time.sleep(before_s)
        started = time.monotonic()
        result = handshake_flood(url, flood_from, **flood)
        ended = time.monotonic()
        time.sleep(0.5)
    finally:
        bystander.stop()
    return {
        "flood": result,
        "bystander_before": bystander.between(started - before_s + 0.5, started),
        "bystander_during": bystander.between(started, ended),
        "bystander_disconnects": bystander.disconnects,
    }
