"""The benchmark behind `bench/run`: the template against Node socket.io and python-socketio on ASGI.

Every system is 2 server processes behind the repo's haproxy/haproxy.cfg (sticky on `io`) with one Redis,
all started here on free 127.0.0.1 ports (scripts/native_stack.Stack) and stopped by pid at the end, on
errors and on Ctrl-C. The load comes from bench/loadgen (Node socket.io-client 4.8, several processes).
Results: bench/results/latest.json (raw + medians), latest.md (the table of docs/performance.md) and latest.png.

    bench/run                 # full sizes, 3 runs
    bench/run --quick         # smoke run, < 2 minutes
    bench/run --help          # every size is a flag
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from report import dig  # bench/report.py, beside this file

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent

# All clients come from 127.0.0.1. haproxy.cfg's per-address limits leave room for hundreds of honest clients from
# one address (docs/operations.md#per-address-limits), not for every size here: these are raised, for the reason
# given, and the run says so (a log line, and `limits_raised` in the results). The TCP connection rate guard stays
# at its default. Not a tuning: a real deployment has many client addresses. Applied to every system alike.
BENCH_HAPROXY_ENV = {"HAPROXY_PER_IP_SESSION_RATE": "1000000", "HAPROXY_PER_IP_CONN_CUR": "1000000"}
BENCH_HAPROXY_WHY = {
    "HAPROXY_PER_IP_SESSION_RATE": "connect, broadcast, broadcast_ceiling and capacity open 1,000 to 10,000 new "
    "sessions from one address at 200-400 per second (default limit: 600 per 10 s)",
    "HAPROXY_PER_IP_CONN_CUR": "connect, broadcast, broadcast_ceiling and capacity hold 1,000 to 10,000 "
    "connections open from one address (default limit: 1,000)",
}
# The template's per-client event limiter (EVENT_RATE, if the checkout has one) stays on but never refuses:
# the echo scenarios send as fast as acks come back, which a real client would not.
BENCH_TEMPLATE_ENV = {"EVENT_RATE": "1000000", "EVENT_BURST": "1000000"}


def load_native_stack(root):
    """scripts/native_stack.py of the template checkout under test (it finds its haproxy.cfg, gunicorn.conf.py
    and wsgi.py next to itself)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        f"native_stack_{abs(hash(str(root)))}", Path(root) / "scripts" / "native_stack.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


native_stack = load_native_stack(ROOT)

TEMPLATE_PYTHON = ROOT / ".venv" / "bin" / "python"
ASGI_PYTHON = BENCH / ".venv-asgi" / "bin" / "python"
# requirements.txt minus gevent-websocket: the same template on plain `-k gevent` + simple-websocket
SIMPLEWS_PYTHON = BENCH / ".venv-simplews" / "bin" / "python"
LOADGEN = BENCH / "loadgen" / "main.js"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = resource.getpagesize() // 1024

# Tunings that need no app change; `template_tuned` runs the template with them (reported as a tuning).
TEMPLATE_TUNED_ENV = {"LOG_LEVEL": "warning", "ASYNC_HANDLERS": "false"}
# broadcast_ceiling last: its failing step may leave a backlog in the servers, and the stack stops after it
COMPARATIVE = ("connect", "echo_ws", "broadcast", "echo_polling", "broadcast_ceiling")

ACTIVE = []  # stacks and loadgen processes to stop on exit


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- the systems -----------------------------------------------------------------------------------------
def reference_stack_class(module):
    class ReferenceStack(module.Stack):
        """native_stack.Stack (same Redis, same haproxy.cfg, same HAProxy env) with another app server."""

        def __init__(self, kind, **kwargs):
            super().__init__(**kwargs)
            self.kind = kind

        def start_app(self, state, app):
            env = dict(self.env)
            env.update(
                PORT=str(app["port"]), HOST="127.0.0.1", INSTANCE_NAME=app["name"], REDIS_URL=state["redis"]["url"]
            )
            if self.kind == "node":
                argv = ["node", str(BENCH / "node-server" / "server.js")]
            else:
                argv = [str(ASGI_PYTHON), str(BENCH / "asgi-server" / "server.py")]
            app["pid"] = self.spawn(app["name"], argv, env)

    return ReferenceStack


def base_env():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STACK_", "APP", "REDIS_", "HAPROXY_"))}
    for key in (
        "SECRET_KEY",
        "SECRET_KEY_FILE",
        "LOG_LEVEL",
        "ACCESS_LOG",
        "WORKER_CONNECTIONS",
        "GUNICORN_CMD_ARGS",
        "WEB_CONCURRENCY",
        "INSTANCE_NAME",
        "PORT",
        "HOST",
        "BIND",
    ):
        env.pop(key, None)
    return env


TEMPLATE_REF = []  # the commit --template-ref resolved to
SNAPSHOTS = []  # temporary exports of --template-ref, removed at the end
ALT_ROOT = None  # --template-root: another checkout of the template, run as system `template_alt`


def variant_env(system):
    """`template+NAME=VALUE[+NAME=VALUE]`: the template with these settings, e.g. for an A/B of one speedup
    (`template+SPEEDUPS_SKIP=session_cache`); bench/ab_report.py compares each variant with `template`."""
    if not system.startswith("template+"):
        return {}
    pairs = [item.partition("=") for item in system.split("+")[1:]]
    if not all(name and sep for name, sep, _ in pairs):
        raise SystemExit(f"system {system!r}: expected template+NAME=VALUE[+NAME=VALUE...]")
    return {name: value for name, _, value in pairs}


def older_haproxy_env(module):
    """A checkout from before the per-address session limit (an A/B against an older --template-ref or
    --template-root) counted TCP connections per address, 500 per 10 s, which the Node polling clients pass in
    a second: for it, that limit is raised as the benchmark always did."""
    if "HAPROXY_PER_IP_SESSION_RATE" in Path(module.HAPROXY_CFG).read_text():
        return {}
    return {"HAPROXY_PER_IP_CONN_RATE": "1000000"}


def make_stack(system, replicas, extra_env=None):
    module = load_native_stack(ALT_ROOT) if system == "template_alt" else native_stack
    env = base_env()
    env.update(APP_ENV="production", SECRET_KEY=secrets.token_hex(32))
    if system == "template_tuned":
        env.update(TEMPLATE_TUNED_ENV)
    env.update(BENCH_HAPROXY_ENV)
    if older := older_haproxy_env(module):
        log(f"{system}: its haproxy.cfg has no session limit yet, so {older} (its 500 TCP connections per 10 s)")
        env.update(older)
    if system.startswith("template"):
        env.update(BENCH_TEMPLATE_ENV)
    env.update(variant_env(system))
    env.update(extra_env or {})
    # no comma in the folder (HAProxy reads one in its runtime socket's path as a list of addresses), and a short
    # name: a Unix socket's path has at most 107 bytes
    state_dir = tempfile.mkdtemp(prefix=f"bench-{system.replace(',', '+')[:40]}-")
    port = native_stack.free_port()
    if system == "template_alt":
        return module.Stack(state_dir=state_dir, port=port, replicas=replicas, env=env, python=str(TEMPLATE_PYTHON))
    if system in ("template", "template_tuned", "template_simplews") or system.startswith("template+"):
        python = SIMPLEWS_PYTHON if system == "template_simplews" else TEMPLATE_PYTHON
        return native_stack.Stack(state_dir=state_dir, port=port, replicas=replicas, env=env, python=str(python))
    return reference_stack_class(native_stack)(system, state_dir=state_dir, port=port, replicas=replicas, env=env)


LOG_DIR = None  # set by main(): raw/<stamp>-logs/, where each stack's logs are kept
KEEP_LOG_BYTES = 2_000_000


MAX_LB_NODES = 3  # HAProxy processes the capacity scenario may put in front of the same apps
LB_MARGIN = 50  # clients kept below each HAProxy's maxconn


class Running:
    def __init__(self, system, replicas, extra_env=None, label=None, lb_nodes=1):
        self.system = system
        self.label = label or system
        self.stack = make_stack(system, replicas, extra_env)
        self.lb_nodes = max(1, min(MAX_LB_NODES, lb_nodes))
        self.extra_lbs = []  # states of the HAProxy processes after the stack's own (start_lb_node)

    def __enter__(self):
        ACTIVE.append(self)
        self.stack.up(timeout=60)
        self.state = self.stack.load()
        self.url = f"http://127.0.0.1:{self.state['port']}"
        self.leaders = {
            "app": [a["pid"] for a in self.state["apps"]],
            "haproxy": [self.state["haproxy"]["pid"]],
            "redis": [self.state["redis"]["pid"]],
        }
        self.urls = [self.url]
        for k in range(2, self.lb_nodes + 1):
            self.urls.append(self.start_lb_node(k))
        return self

    def start_lb_node(self, k, timeout=60):
        """Another load-balancer node: an HAProxy from the same haproxy.cfg with the stack HAProxy's environment
        (Stack.haproxy_env: same apps, cookie key, maxconn), but its own public port, stats port, runtime
        socket and pidfile. Both route by the same `io` cookie values. Its pid is recorded before it is waited
        for, so stop() ends it whatever happens; its master and worker count as `haproxy` in sample()."""
        stack = self.stack
        node = dict(
            self.state,
            port=native_stack.free_port(),
            haproxy=dict(
                self.state["haproxy"],
                stats_port=native_stack.free_port(),
                socket=str(stack.dir / f"haproxy{k}.sock"),
                pidfile=str(stack.dir / f"haproxy{k}.pid"),
                pid=None,
                previous_pids=[],
            ),
        )
        stack.start_haproxy(node)  # the stack's own start: its haproxy.cfg checked, then run (log: haproxy.log)
        self.extra_lbs.append(node)
        self.leaders["haproxy"].append(node["haproxy"]["pid"])
        stack.wait_all_up(node, timeout)
        return f"http://127.0.0.1:{node['port']}"

    def lb_conns(self):
        """CurrConns of every HAProxy process (runtime API `show info`), in the order of self.urls."""
        counts = []
        for st in [self.state, *self.extra_lbs]:
            try:
                info = native_stack.haproxy_command(st["haproxy"]["socket"], "show info")
                counts.append(next(int(x.split(":")[1]) for x in info.splitlines() if x.startswith("CurrConns:")))
            except (OSError, StopIteration, ValueError):
                counts.append(None)
        return counts

    def denied(self):
        """Requests HAProxy's rules refused (the public frontend's `dreq`: the per-address limits' 429s), summed
        over every HAProxy process; None where a runtime socket does not answer."""
        total = 0
        for st in [self.state, *self.extra_lbs]:
            try:
                rows = native_stack.haproxy_stats(st["haproxy"]["socket"])
                total += sum(int(r["dreq"] or 0) for r in rows if r["pxname"] == "public" and r["svname"] == "FRONTEND")
            except (OSError, KeyError, ValueError):
                return None
        return total

    def stop(self):
        try:
            for node in self.extra_lbs:  # before the apps, like Stack.down stops its own HAProxy first
                try:
                    self.stack.stop_pid(node["haproxy"]["pid"], timeout=5)
                except Exception as exc:  # still stop the stack
                    log(f"stopping haproxy pid {node['haproxy']['pid']}: {exc}")
            self.extra_lbs = []
            self.stack.down()
        finally:
            self.keep_logs()
            shutil.rmtree(self.stack.dir, ignore_errors=True)

    def keep_logs(self):
        """The stack's logs (HAProxy's server state changes, the apps' errors) under raw/, last 2 MB each."""
        if LOG_DIR is None or not self.stack.logs.is_dir():
            return
        dest = LOG_DIR / self.label
        dest.mkdir(parents=True, exist_ok=True)
        for path in self.stack.logs.glob("*.log"):
            with open(path, "rb") as f:
                size = f.seek(0, 2)
                f.seek(max(0, size - KEEP_LOG_BYTES))
                (dest / path.name).write_bytes(f.read())

    def __exit__(self, *exc):
        if self in ACTIVE:
            ACTIVE.remove(self)
        self.stop()


def cleanup(*_):
    for item in list(ACTIVE):
        ACTIVE.remove(item)
        try:
            if isinstance(item, subprocess.Popen):
                os.killpg(item.pid, signal.SIGKILL)
                item.wait(5)
            else:
                item.stop()
        except Exception as exc:  # keep stopping the rest
            log(f"cleanup: {exc}")


# --- /proc sampling ----------------------------------------------------------------------------------------
def proc_table():
    """{pid: (session id, cpu seconds, rss kB)} for every process."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/statm") as f:
                rss_pages = int(f.read().split()[1])
        except (OSError, IndexError, ValueError):
            continue
        table[int(entry)] = (int(fields[3]), (int(fields[11]) + int(fields[12])) / CLK_TCK, rss_pages * PAGE_KB)
    return table


def sample(leaders):
    """CPU seconds and RSS (kB) per role, summed over every process of each role's sessions (the stacks
    start each server with its own session, so gunicorn's master and worker, HAProxy's master and worker
    are all counted)."""
    table = proc_table()
    out = {}
    for role, pids in leaders.items():
        sessions = set(pids)
        rows = [v for v in table.values() if v[0] in sessions]
        out[role] = {"cpu_s": sum(r[1] for r in rows), "rss_kb": sum(r[2] for r in rows), "procs": len(rows)}
    return out


def machine_cpu():
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def delta(before, after, seconds):
    res = {}
    for role in after:
        cpu = after[role]["cpu_s"] - before[role]["cpu_s"]
        res[role] = {
            "cpu_s": round(cpu, 3),
            "cpu_pct_of_core": round(100 * cpu / seconds, 1) if seconds else None,
            "rss_mb": round(after[role]["rss_kb"] / 1024, 1),
            "procs": after[role]["procs"],
        }
    res["total"] = {
        "cpu_s": round(sum(res[r]["cpu_s"] for r in after), 3),
        "cpu_pct_of_core": round(100 * sum(res[r]["cpu_s"] for r in after) / seconds, 1) if seconds else None,
        "rss_mb": round(sum(res[r]["rss_mb"] for r in after), 1),
    }
    return res


# --- the load generator -------------------------------------------------------------------------------------
class LoadgenError(RuntimeError):
    """The load generator failed or ran out of time; `partial` keeps the steps it had reported (memory_curve)."""

    def __init__(self, message, partial):
        super().__init__(message)
        self.partial = partial


def run_loadgen(running, cfg, time_limit, profile=None):
    cfg = dict(cfg, url=running.url, timeLimitS=int(time_limit))
    if len(running.urls) > 1:  # several HAProxy processes: the load generator spreads its clients over them
        cfg["urls"] = running.urls
    proc = subprocess.Popen(
        ["node", str(LOADGEN), json.dumps(cfg)],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
        cwd=BENCH,
    )
    ACTIVE.append(proc)
    samples, steps, result, error = {}, [], None, None
    t_start = None
    step_mark = None  # (time, sample) at the last "step_begin" (broadcast_ceiling): CPU per step
    spy = None
    denied_before = running.denied()
    try:
        idle = sample(running.leaders)
        for line in proc.stdout:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            event = msg.get("event")
            if event == "start":
                t_start = time.monotonic()
                samples["start"] = sample(running.leaders)
                samples["machine_start"] = machine_cpu()
                if profile:
                    spy = profile(running)
            elif event == "end":
                seconds = time.monotonic() - t_start
                samples["end"] = sample(running.leaders)
                samples["machine_end"] = machine_cpu()
                samples["seconds"] = seconds
            elif event == "step_begin":
                step_mark = (time.monotonic(), sample(running.leaders))
            elif event == "step":
                s = sample(running.leaders)
                row = {
                    **{k: v for k, v in msg.items() if k != "event"},
                    "rss_mb": {r: round(v["rss_kb"] / 1024, 1) for r, v in s.items()},
                }
                if len(running.urls) > 1:  # how the clients spread over the HAProxy processes
                    row["haproxy_conns"] = running.lb_conns()
                if step_mark:  # over the step and its grace
                    row["server"] = delta(step_mark[1], s, time.monotonic() - step_mark[0])
                    if msg.get("received"):
                        row["server_cpu_ms_per_1000"] = round(
                            1e6 * row["server"]["total"]["cpu_s"] / msg["received"], 2
                        )
                    step_mark = None
                steps.append(row)
            elif event == "result":
                result = msg["result"]
            elif event == "error":
                error = msg["message"]
        proc.wait(30)
    finally:
        if spy:
            spy.wait(60)
        if proc in ACTIVE:
            ACTIVE.remove(proc)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    denied_after = running.denied()
    if denied_before is not None and denied_after is not None and denied_after > denied_before:
        # the run says so: a limit of haproxy.cfg refused bench clients (BENCH_HAPROXY_ENV raises what is known)
        log(
            f"{running.label} {cfg['scenario']}: HAProxy refused {denied_after - denied_before} requests (429, a "
            "per-address limit of haproxy.cfg): all bench clients come from 127.0.0.1"
        )
    if error or result is None:
        raise LoadgenError(
            f"loadgen failed: {error or 'no result'} (exit {proc.returncode})",
            {"steps": steps, "idle_rss_mb": {r: round(v["rss_kb"] / 1024, 1) for r, v in idle.items()}},
        )
    if denied_before is not None and denied_after is not None:
        result["haproxy_denied"] = denied_after - denied_before
    if "start" in samples and "end" in samples:
        result["server"] = delta(samples["start"], samples["end"], samples["seconds"])
        result["measured_s"] = round(samples["seconds"], 3)
        result["loadgen_cpu_pct_of_core"] = round(100 * result["loadgen_cpu_s"] / samples["seconds"], 1)
        busy = samples["machine_end"][0] - samples["machine_start"][0]
        total = samples["machine_end"][1] - samples["machine_start"][1]
        ncpu = os.cpu_count() or 1
        machine_pct = 100 * ncpu * busy / total if total else 0  # in % of one core, like the others
        result["machine_busy_pct_of_core"] = round(machine_pct, 1)
        # CPU that neither the servers nor the load generator used: other work on the machine (noise)
        result["other_cpu_pct_of_core"] = round(
            max(0.0, machine_pct - result["server"]["total"]["cpu_pct_of_core"] - result["loadgen_cpu_pct_of_core"]), 1
        )
        done = result.get("acks") or result.get("received")
        if done:
            # server CPU per 1,000 messages (echoes or deliveries): steadier than throughput on a busy machine
            result["server_cpu_ms_per_1000"] = round(1e6 * result["server"]["total"]["cpu_s"] / done, 2)
            result["app_cpu_ms_per_1000"] = round(1e6 * result["server"]["app"]["cpu_s"] / done, 2)
    result["idle_rss_mb"] = {r: round(v["rss_kb"] / 1024, 1) for r, v in idle.items()}
    if result.get("connected") and result.get("server") and "app" in idle:
        # what each connection adds to the app processes (connect runs first, on a fresh stack)
        grown_kb = result["server"]["app"]["rss_mb"] * 1024 - idle["app"]["rss_kb"]
        result["app_rss_kb_per_conn"] = round(grown_kb / result["connected"], 1)
    if steps:
        result["steps"] = steps
    return result


def ceiling_steps(a):
    """--ceiling-steps as a rising list of asked deliveries/s (at most 50 steps)."""
    steps = sorted({int(float(x)) for x in str(a.ceiling_steps).split(",") if x.strip()})
    steps = [s for s in steps if s > 0][:50]
    if not steps:
        raise SystemExit("--ceiling-steps: give at least one positive rate, e.g. 20000,40000")
    return steps


def scenario_cfg(name, a, clients=None):
    if name == "connect":
        return {
            "scenario": "connect",
            "clients": a.connect_clients,
            "rate": a.connect_rate,
            "workers": a.workers,
            "waitUpgrade": True,
        }
    if name in ("echo_ws", "scaling"):
        return {
            "scenario": "echo",
            "clients": clients or a.echo_clients,
            "workers": a.workers,
            "rate": a.ramp_rate,
            "waitUpgrade": True,
            "durationMs": int(1000 * (a.scaling_duration if name == "scaling" else a.echo_duration)),
        }
    if name == "echo_polling":
        return {
            "scenario": "echo",
            "clients": a.polling_clients,
            "workers": a.workers,
            "rate": a.ramp_rate,
            "transports": ["polling"],
            "durationMs": int(1000 * a.polling_duration),
        }
    if name == "broadcast":
        return {
            "scenario": "broadcast",
            "clients": a.broadcast_clients,
            "workers": a.workers,
            "rate": a.ramp_rate,
            "waitUpgrade": True,
            "senders": a.broadcast_senders,
            "sendRate": a.broadcast_rate,
            "durationMs": int(1000 * a.broadcast_duration),
            "graceMs": 2000,
        }
    if name == "broadcast_ceiling":
        steps = ceiling_steps(a)
        step_ms, grace_ms = int(1000 * a.ceiling_step_duration), int(1000 * a.ceiling_grace)
        return {
            "scenario": "broadcast_ceiling",
            "clients": a.ceiling_clients,
            "workers": a.workers,
            "rate": a.ramp_rate,
            "waitUpgrade": True,
            "senders": a.ceiling_senders,
            "steps": steps,  # asked deliveries/s, climbed until the first step that fails
            "stepMs": step_ms,
            "graceMs": grace_ms,
            "p99LimitMs": a.ceiling_p99_ms,
            "durationMs": step_ms * len(steps),  # --profile's window
            # connecting + every step: the loadgen's own bound (bench/loadgen/main.js stops there)
            "timeLimitS": int(120 + a.ceiling_clients / max(1, a.ramp_rate) + len(steps) * (step_ms + grace_ms) / 1000),
        }
    if name == "capacity":
        steps = list(range(a.capacity_step, clients, a.capacity_step)) + [clients]
        return {
            "scenario": "capacity",
            "clients": clients,
            "workers": a.capacity_workers,
            "rate": a.capacity_rate,
            "transports": ["websocket"],
            "steps": steps,
            "holdMs": int(1000 * a.capacity_hold),
            "stepHoldMs": 1000,
            "connectTimeoutMs": 20000,
            "ackTimeoutMs": 20000,
        }
    if name == "memory_curve":  # idle clients after the upgrade (polling first, as browsers connect)
        return {
            "scenario": "capacity",  # bench/loadgen: connect in steps, sample after each, hold, one echo each
            "clients": clients,
            "workers": a.curve_workers,
            "rate": a.curve_rate,
            "waitUpgrade": True,
            "upgradeTimeoutMs": 20000,
            "steps": curve_sizes(a, clients),
            "holdMs": int(1000 * a.curve_hold),
            "stepHoldMs": int(1000 * a.curve_step_hold),
            "connectTimeoutMs": 20000,
            "ackTimeoutMs": 20000,
        }
    raise ValueError(name)


def curve_sizes(a, cap=None):
    """--curve-sizes as a rising list of client counts (capped at what the HAProxy processes carry)."""
    sizes = sorted({int(float(x)) for x in str(a.curve_sizes).split(",") if x.strip()})
    sizes = [n for n in sizes if n > 0]
    if cap:
        sizes = [n for n in sizes if n < cap] + [cap]
    return sizes


def curve_points(res):
    """KB per connection at each step of a memory_curve run: (RSS of every app process at the step - RSS of
    the same processes before the first client) / clients connected. App processes only (gunicorn masters
    and workers, Node's and uvicorn's processes); HAProxy and Redis are reported apart."""
    idle = res.get("idle_rss_mb") or {}
    points = []
    for step in res.get("steps") or []:
        conns = step.get("connected") or 0
        if not conns or "app" not in idle:
            continue
        app_kb = (step["rss_mb"]["app"] - idle["app"]) * 1024
        points.append(
            {
                "clients": step["target"],
                "connected": conns,
                "websocket": step.get("websocket"),
                "app_rss_mb": step["rss_mb"]["app"],
                "app_kb_per_conn": round(app_kb / conns, 1),
                "haproxy_rss_mb": step["rss_mb"].get("haproxy"),
            }
        )
    return points


def curve_medians(rows):
    """{system: {clients: {median KB per connection, runs, each run's}}} over the memory_curve runs."""
    out = {}
    for row in rows:
        for p in row.get("points", []):
            out.setdefault(row["system"], {}).setdefault(str(p["clients"]), []).append(p)
    med = {}
    for system, by_size in out.items():
        for size, pts in sorted(by_size.items(), key=lambda kv: int(kv[0])):
            full = [p for p in pts if p["websocket"] is not None and p["websocket"] >= 0.99 * int(size)]
            vals = [p["app_kb_per_conn"] for p in (full or pts)]
            med.setdefault(system, {})[size] = {
                "app_kb_per_conn": round(statistics.median(vals), 1),
                "each_run": vals,
                "runs": len(vals),
                "all_upgraded": len(full) == len(pts),
            }
    return med


# --- profiling -------------------------------------------------------------------------------------------------
def py_spy_profiler(out_dir, seconds, name):
    py_spy = BENCH / ".venv-asgi" / "bin" / "py-spy"

    def start(running):
        table = proc_table()
        leader = running.leaders["app"][0]
        workers = [pid for pid, v in table.items() if v[0] == leader and pid != leader]
        target = workers[0] if workers else leader
        out = Path(out_dir) / f"py-spy-{name}"
        log(f"py-spy on pid {target} for {seconds}s -> {out}.*")
        return subprocess.Popen(
            [
                str(py_spy),
                "record",
                "--pid",
                str(target),
                "--duration",
                str(int(seconds)),
                "--rate",
                "200",
                "--format",
                "raw",
                "--output",
                f"{out}.txt",
                "--nonblocking",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    return start


# --- medians and ratios -----------------------------------------------------------------------------------------
KEY_METRICS = {
    "connect": [
        "server_cpu_ms_per_1000",
        "app_cpu_ms_per_1000",
        "other_cpu_pct_of_core",
        "connects_per_s",
        "connected",
        "connect_failed",
        "connect.p50_ms",
        "connect.p99_ms",
        "upgraded.p50_ms",
        "upgraded.p99_ms",
        "app_rss_kb_per_conn",
        "server.total.cpu_s",
        "server.total.rss_mb",
        "server.app.rss_mb",
        "loadgen_cpu_pct_of_core",
    ],
    "echo_ws": [
        "server_cpu_ms_per_1000",
        "app_cpu_ms_per_1000",
        "other_cpu_pct_of_core",
        "echo_per_s",
        "latency.p50_ms",
        "latency.p99_ms",
        "ack_errors",
        "server.total.cpu_pct_of_core",
        "server.app.cpu_pct_of_core",
        "server.haproxy.cpu_pct_of_core",
        "server.redis.cpu_pct_of_core",
        "server.total.rss_mb",
        "server.app.rss_mb",
        "loadgen_cpu_pct_of_core",
        "connect_failed",
        "upgrade_timeouts",
    ],
    "echo_polling": [
        "server_cpu_ms_per_1000",
        "app_cpu_ms_per_1000",
        "other_cpu_pct_of_core",
        "echo_per_s",
        "latency.p50_ms",
        "latency.p99_ms",
        "ack_errors",
        "server.total.cpu_pct_of_core",
        "server.app.cpu_pct_of_core",
        "server.haproxy.cpu_pct_of_core",
        "server.total.rss_mb",
        "server.app.rss_mb",
        "loadgen_cpu_pct_of_core",
        "connect_failed",
    ],
    "broadcast": [
        "server_cpu_ms_per_1000",
        "app_cpu_ms_per_1000",
        "other_cpu_pct_of_core",
        "delivered_fraction",
        "delivered_per_s",
        "asked_deliveries_per_s",
        "latency.p50_ms",
        "latency.p99_ms",
        "send_errors",
        "server.total.cpu_pct_of_core",
        "server.app.cpu_pct_of_core",
        "server.redis.cpu_pct_of_core",
        "server.total.rss_mb",
        "server.app.rss_mb",
        "loadgen_cpu_pct_of_core",
        "connect_failed",
        "upgrade_timeouts",
    ],
    "broadcast_ceiling": [
        "ceiling_deliveries_per_s",  # highest step passed (0: none, below the first step)
        "ceiling_delivered_per_s",
        "ceiling_p99_ms",
        "first_failed_deliveries_per_s",
        "steps_passed",
        "steps_tried",
        "server_cpu_ms_per_1000",
        "app_cpu_ms_per_1000",
        "other_cpu_pct_of_core",
        "server.total.cpu_pct_of_core",
        "server.total.rss_mb",
        "server.app.rss_mb",
        "loadgen_cpu_pct_of_core",
        "connect_failed",
        "upgrade_timeouts",
    ],
}


def medians(raw_runs):
    """{scenario: {system: {metric: median}}} over the runs that produced it."""
    out = {}
    for scenario, metrics in KEY_METRICS.items():
        for system in {s for run in raw_runs for s in run.get(scenario, {})}:
            values = [run[scenario][system] for run in raw_runs if system in run.get(scenario, {})]
            values = [v for v in values if "error" not in v]
            med = {}
            for metric in metrics:
                nums = [dig(v, metric) for v in values]
                nums = [n for n in nums if isinstance(n, (int, float))]
                if nums:
                    med[metric] = round(statistics.median(nums), 4)
            med["runs"] = len(values)
            out.setdefault(scenario, {})[system] = med
    return out


def ceiling_step_medians(raw_runs):
    """broadcast_ceiling per step: {system: [{asked, tried, passed, medians of what the tries achieved}]}."""
    out = {}
    for system in sorted({s for run in raw_runs for s in run.get("broadcast_ceiling", {})}):
        by_asked = {}
        for run in raw_runs:
            res = run.get("broadcast_ceiling", {}).get(system, {})
            for step in res.get("steps") or []:
                by_asked.setdefault(step["asked_deliveries_per_s"], []).append(step)
        rows = []
        for asked in sorted(by_asked):
            tries = by_asked[asked]
            row = {
                "asked_deliveries_per_s": asked,
                "tried": len(tries),
                "passed": sum(bool(s["passed"]) for s in tries),
            }
            for key in (
                "delivered_fraction",
                "delivered_per_s",
                "sent_per_s",
                "latency.p50_ms",
                "latency.p99_ms",
                "server.total.cpu_pct_of_core",
                "server_cpu_ms_per_1000",
                "loadgen_cpu_pct_of_core",
            ):
                nums = [dig(s, key) for s in tries]
                nums = [n for n in nums if isinstance(n, (int, float))]
                if nums:
                    row[key] = round(statistics.median(nums), 4)
            rows.append(row)
        out[system] = rows
    return out


def ratios(med):
    out = {}
    for scenario, systems in med.items():
        for base in ("template", "template_tuned", "template_alt"):
            if base not in systems:
                continue
            for other in ("node", "asgi"):
                if other not in systems:
                    continue
                r = {}
                for metric, value in systems[base].items():
                    ref = systems[other].get(metric)
                    if metric != "runs" and isinstance(ref, (int, float)) and ref:
                        r[metric] = round(value / ref, 3)
                out.setdefault(scenario, {})[f"{base}/{other}"] = r
        if "template_simplews" in systems and "template" in systems:  # WebSocket server A/B, same app
            simple, card = systems["template_simplews"], systems["template"]
            out.setdefault(scenario, {})["template_simplews/template"] = {
                metric: round(value / card[metric], 3)
                for metric, value in simple.items()
                if metric != "runs" and isinstance(card.get(metric), (int, float)) and card[metric]
            }
    return out


# --- machine description ----------------------------------------------------------------------------------------
def cmd_version(argv, pattern=None):
    try:
        text = subprocess.run(argv, capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    first = text.splitlines()[0] if text else ""
    if pattern:
        m = re.search(pattern, text)
        return m.group(1) if m else first
    return first


def pip_versions(python, names):
    code = (
        "import importlib.metadata as m, json, sys\n"
        "out = {}\n"
        "for n in sys.argv[1:]:\n"
        "    try: out[n] = m.version(n)\n"
        "    except m.PackageNotFoundError: out[n] = None\n"
        "print(json.dumps(out))"
    )
    try:
        return json.loads(
            subprocess.run([str(python), "-c", code, *names], capture_output=True, text=True, timeout=30).stdout
        )
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return {}


def machine():
    cpu_model = None
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kb = int(f.readline().split()[1])
    node_pkgs = {}
    for name in (
        "socket.io",
        "socket.io-client",
        "@socket.io/redis-adapter",
        "redis",
        "engine.io",
        "engine.io-client",
        "ws",
    ):
        pkg = BENCH / "node_modules" / name / "package.json"
        if pkg.exists():
            node_pkgs[name] = json.loads(pkg.read_text())["version"]
    loadavg = open("/proc/loadavg").read().split()[:3]
    git = cmd_version(["git", "-C", str(ROOT), "describe", "--always", "--dirty"])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model,
        "ram_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "os": cmd_version(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "loadavg_at_start": loadavg,
        "template_git": f"{TEMPLATE_REF[0]} (--template-ref)" if TEMPLATE_REF else f"{git} (work tree)",
        "template_alt_root": ALT_ROOT,
        "template_alt_git": cmd_version(["git", "-C", ALT_ROOT, "describe", "--always", "--dirty"])
        if ALT_ROOT
        else None,
        "ulimit_nofile": [soft, hard],
        "haproxy_maxconn": native_stack.haproxy_maxconn(),
        "versions": {
            "python_template": cmd_version([str(TEMPLATE_PYTHON), "-V"], r"Python (\S+)"),
            "python_bench": platform.python_version(),
            "node": cmd_version(["node", "-v"]),
            "haproxy": cmd_version(["haproxy", "-v"], r"version (\S+)"),
            "redis": cmd_version(["redis-server", "--version"], r"v=(\S+)"),
            "template_packages": pip_versions(
                TEMPLATE_PYTHON,
                [
                    "Flask",
                    "Flask-SocketIO",
                    "python-socketio",
                    "python-engineio",
                    "gevent",
                    "gevent-websocket",
                    "gunicorn",
                    "redis",
                    "greenlet",
                ],
            ),
            "simplews_packages": pip_versions(
                SIMPLEWS_PYTHON, ["python-engineio", "simple-websocket", "wsproto", "gevent", "gunicorn"]
            )
            if SIMPLEWS_PYTHON.exists()
            else {},
            "asgi_packages": pip_versions(
                ASGI_PYTHON,
                ["python-socketio", "python-engineio", "uvicorn", "uvloop", "httptools", "websockets", "redis"],
            ),
            "node_packages": node_pkgs,
        },
    }


# --- main ---------------------------------------------------------------------------------------------------------
def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="bench/run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="small sizes and 1 run (smoke test, < 2 minutes)")
    p.add_argument("--runs", type=int, default=3, help="runs per system; medians are taken over them (default 3)")
    p.add_argument(
        "--systems",
        default="template,node,asgi",
        help="comma list of template, template_tuned (LOG_LEVEL=warning ASYNC_HANDLERS=false), template_alt "
        "(--template-root), template_simplews (the template on plain gevent + simple-websocket: "
        "bench/.venv-simplews, no gevent-websocket), template+NAME=VALUE (the template with these settings, for A/Bs), node, asgi",
    )
    p.add_argument(
        "--template-ref",
        help="benchmark this git ref of the repo (exported to a temporary folder with "
        "git archive: scripts/native_stack.py, haproxy.cfg and the app all from it) instead of the work tree",
    )
    p.add_argument(
        "--template-root",
        help="another checkout of the template (e.g. a git worktree with a proposed "
        "change), run with the template's venv as system template_alt",
    )
    p.add_argument(
        "--scenarios", default="connect,echo_ws,broadcast,echo_polling,broadcast_ceiling,memory_curve,capacity,scaling"
    )
    p.add_argument("--replicas", type=int, default=2, help="server processes per system in the comparisons")
    p.add_argument("--workers", type=int, default=2, help="load generator processes")
    p.add_argument("--ramp-rate", type=int, default=400, help="new clients per second when setting up a scenario")
    p.add_argument("--connect-clients", type=int, default=1000)
    p.add_argument("--connect-rate", type=int, default=200, help="connect scenario: new clients per second")
    p.add_argument("--echo-clients", type=int, default=200)
    p.add_argument("--echo-duration", type=float, default=20)
    p.add_argument("--broadcast-clients", type=int, default=1000)
    p.add_argument("--broadcast-senders", type=int, default=2)
    p.add_argument("--broadcast-rate", type=float, default=10, help="messages per second per sender")
    p.add_argument("--broadcast-duration", type=float, default=10)
    p.add_argument("--ceiling-clients", type=int, default=1000, help="broadcast_ceiling: clients, connected once")
    p.add_argument("--ceiling-senders", type=int, default=2, help="broadcast_ceiling: clients that send broadcasts")
    p.add_argument(
        "--ceiling-steps",
        default="20000,30000,40000,50000,60000,80000,100000",
        help="broadcast_ceiling: asked deliveries/s (senders x messages/s x clients), climbed until the first step "
        "with less than 100%% delivered or p99 >= --ceiling-p99-ms",
    )
    p.add_argument("--ceiling-step-duration", type=float, default=6, help="broadcast_ceiling: seconds per step")
    p.add_argument(
        "--ceiling-grace", type=float, default=2, help="broadcast_ceiling: seconds after a step for late deliveries"
    )
    p.add_argument("--ceiling-p99-ms", type=float, default=100, help="broadcast_ceiling: a step passes below it")
    p.add_argument("--polling-clients", type=int, default=200)
    p.add_argument("--polling-duration", type=float, default=20)
    p.add_argument(
        "--capacity-clients",
        type=int,
        default=10000,
        help="WebSocket clients; above HAProxy's maxconn - 50 (native_stack derives maxconn from ulimit -n, "
        f"per process) a second HAProxy process is started, up to {MAX_LB_NODES}",
    )
    p.add_argument(
        "--capacity-lb-nodes",
        type=int,
        default=0,
        help=f"HAProxy processes in front of the capacity apps, 1 to {MAX_LB_NODES} (default 0: as many as the "
        "clients need); the clients are spread over them",
    )
    p.add_argument("--capacity-processes", type=int, default=3)
    p.add_argument("--capacity-rate", type=int, default=500)
    p.add_argument("--capacity-step", type=int, default=1000, help="memory is sampled after every step")
    p.add_argument("--capacity-hold", type=float, default=20)
    p.add_argument("--capacity-workers", type=int, default=4)
    p.add_argument(
        "--capacity-variants",
        default="shipped;WORKER_CONNECTIONS=4000",
        help="';'-separated template env variants for capacity: 'shipped' or K=V,K=V",
    )
    p.add_argument(
        "--curve-sizes",
        default="1000,5000,10000",
        help="memory_curve: idle WebSocket clients (after the upgrade) at which the app memory is sampled, on "
        "--replicas processes of every system in --systems",
    )
    p.add_argument("--curve-runs", type=int, default=None, help="memory_curve runs (default: --runs)")
    p.add_argument("--curve-rate", type=int, default=400, help="memory_curve: new clients per second")
    p.add_argument("--curve-step-hold", type=float, default=3, help="memory_curve: seconds after each step")
    p.add_argument("--curve-hold", type=float, default=3, help="memory_curve: seconds held at the largest size")
    p.add_argument("--curve-workers", type=int, default=4, help="memory_curve: load generator processes")
    p.add_argument(
        "--curve-time-limit",
        type=int,
        default=240,
        help="memory_curve: seconds a system gets for all its steps; the steps it reached by then still count",
    )
    p.add_argument(
        "--curve-template-env",
        default="WORKER_CONNECTIONS=6000,APP_MAXCONN=5900",
        help="memory_curve: settings for template systems so that 10,000 clients fit on 2 processes "
        "(the shipped cap is 5,000 per process, HAProxy's 4,900 per server): caps only, no memory cost",
    )
    p.add_argument("--scaling-processes", default="1,2,3,4")
    p.add_argument("--scaling-clients", type=int, default=200)
    p.add_argument("--scaling-duration", type=float, default=10)
    p.add_argument("--scaling-runs", type=int, default=None, help="default: --runs")
    p.add_argument("--profile", action="store_true", help="py-spy one template worker in run 1 (raw/py-spy-*.txt)")
    p.add_argument("--profile-scenarios", default="echo_ws", help="which scenarios --profile records")
    p.add_argument(
        "--paired",
        action="store_true",
        help="paired A/B (bench/paired_ab.py): each template+NAME=VALUE of --systems and the template on one "
        "scenario back to back, on the scenarios of the rows (ROWS) of the speedups its SPEEDUPS_SKIP names; --pairs rounds; "
        "the A/A template+SPEEDUPS=on is added if missing; --runs is not used; tables by bench/paired_report.py",
    )
    p.add_argument("--pairs", type=int, default=5, help="--paired: pairs per variant and scenario (default 5)")
    p.add_argument(
        "--paired-base",
        default="template",
        help="--paired: what each variant is paired with (default template); a template+NAME=VALUE measures a "
        "speedup alone that others REQUIRE, e.g. base SPEEDUPS_SKIP=idle_websockets, variant ...=idle_websockets,websocket_writes",
    )
    p.add_argument("--out", help="results folder (default bench/results, or bench/results/quick with --quick)")
    a = p.parse_args(argv)
    if a.quick:
        quick = dict(
            runs=1,
            connect_clients=100,
            connect_rate=200,
            echo_clients=50,
            echo_duration=2,
            broadcast_clients=100,
            broadcast_duration=2,
            ceiling_clients=200,
            ceiling_steps="4000,8000",
            ceiling_step_duration=2,
            ceiling_grace=1,
            polling_clients=50,
            polling_duration=2,
            capacity_clients=600,
            capacity_step=300,
            capacity_hold=1,
            capacity_variants="shipped",
            curve_sizes="100,300",
            curve_step_hold=1,
            curve_hold=1,
            scaling_processes="1,2",
            scaling_clients=50,
            scaling_duration=2,
            scaling_runs=1,
        )
        given = {arg.split("=")[0].lstrip("-").replace("-", "_") for arg in argv if arg.startswith("--")}
        for key, value in quick.items():
            if key not in given:
                setattr(a, key, value)
    if a.scaling_runs is None:
        a.scaling_runs = a.runs
    if a.curve_runs is None:
        a.curve_runs = a.runs
    if a.out is None:  # a smoke run never overwrites the real results
        a.out = str(BENCH / "results" / ("quick" if a.quick else ""))
        if a.paired:
            a.out = str(BENCH / "results" / ("quick-paired" if a.quick else "paired"))
    return a


def interrupted(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def parse_env_variant(text):
    text = text.strip()
    if text in ("", "shipped"):
        return "shipped", {}
    env = dict(item.split("=", 1) for item in text.split(",") if item)
    return text, env


def main(argv):
    a = parse_args(argv)
    global ALT_ROOT, native_stack
    ALT_ROOT = a.template_root
    if a.template_ref:
        snapshot = Path(tempfile.mkdtemp(prefix="bench-ref-"))
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", a.template_ref], check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(snapshot)], input=archive, check=True)
        native_stack = load_native_stack(snapshot)
        SNAPSHOTS.append(snapshot)
        TEMPLATE_REF.append(
            subprocess.run(
                ["git", "-C", str(ROOT), "rev-parse", "--short", a.template_ref], capture_output=True, text=True
            ).stdout.strip()
        )
        log(f"template from git ref {a.template_ref} in {snapshot}")
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupted)
    if a.paired:  # bench/paired_ab.py, with this module's stacks, load generator and cleanup
        import paired_ab

        try:
            return paired_ab.run(a, sys.modules[__name__])
        finally:
            for snapshot in SNAPSHOTS:
                shutil.rmtree(snapshot, ignore_errors=True)
    systems = [s.strip() for s in a.systems.split(",") if s.strip()]
    scenarios = [s.strip() for s in a.scenarios.split(",") if s.strip()]
    out_dir = Path(a.out)
    raw_dir = out_dir / "raw"
    raw_dir.mkdir(parents=True, exist_ok=True)
    # HAProxy's maxconn follows ulimit -n, which is per process (two descriptors per proxied connection): above
    # what one HAProxy carries, capacity puts more HAProxy processes (load-balancer nodes) before the same apps
    maxconn = native_stack.haproxy_maxconn()
    per_lb = max(1, maxconn - LB_MARGIN)
    lb_nodes = a.capacity_lb_nodes or -(-a.capacity_clients // per_lb)
    lb_nodes = max(1, min(MAX_LB_NODES, lb_nodes))
    capacity_clients = min(a.capacity_clients, lb_nodes * per_lb)
    sizes = {k: v for k, v in vars(a).items() if k not in ("out",)}
    sizes["capacity_clients_used"] = capacity_clients
    sizes["capacity_haproxy_processes"] = lb_nodes
    sizes["capacity_haproxy_maxconn"] = maxconn
    # memory_curve connects polling first, then upgrades: a client may hold its polling connection (kept alive)
    # and its WebSocket through HAProxy for a moment, so room for two per client
    curve_max = max(curve_sizes(a))
    curve_lbs = max(1, min(MAX_LB_NODES, -(-2 * curve_max // per_lb)))
    curve_clients = min(curve_max, curve_lbs * per_lb)
    sizes["curve_clients_used"] = curve_clients
    sizes["curve_haproxy_processes"] = curve_lbs
    doc = {"machine": machine(), "sizes": sizes, "runs": [], "capacity": [], "scaling": [], "memory_curve": []}
    doc["limits_raised"] = {
        name: {"value": BENCH_HAPROXY_ENV[name], "why": why} for name, why in BENCH_HAPROXY_WHY.items()
    }
    for name, why in BENCH_HAPROXY_WHY.items():
        log(f"{name}={BENCH_HAPROXY_ENV[name]} for every system: {why}")
    if capacity_clients < a.capacity_clients and "capacity" in scenarios:
        doc["notes"] = [
            f"capacity capped at {capacity_clients} clients: {lb_nodes} HAProxy process(es) of maxconn {maxconn} "
            f"- {LB_MARGIN}, which follows ulimit -n {resource.getrlimit(resource.RLIMIT_NOFILE)[1]} per process "
            "(two descriptors per proxied connection)"
        ]
    global LOG_DIR
    LOG_DIR = raw_dir / f"{time.strftime('%Y%m%d-%H%M%S')}-logs"
    t_begin = time.monotonic()
    comparative = [s for s in scenarios if s in COMPARATIVE]
    try:
        for run in range(1, a.runs + 1):
            if not comparative:
                break
            run_doc = {"run": run}
            # interleaved, and each run starts one system later (A,B,C, B,C,A, C,A,B): a drift within runs does
            # not always hit the same system, e.g. the last one
            shift = (run - 1) % len(systems)
            for system in systems[shift:] + systems[:shift]:
                log(f"run {run}/{a.runs}: {system} ({a.replicas} processes)")
                try:
                    running = Running(system, a.replicas, label=f"run{run}-{system}").__enter__()
                except Exception as exc:  # a system that does not start is recorded, the others still run
                    log(f"  {system} did not start: {exc}")
                    for scenario in comparative:
                        run_doc.setdefault(scenario, {})[system] = {"error": f"start: {exc}"}
                    continue
                try:
                    for scenario in comparative:
                        cfg = scenario_cfg(scenario, a)
                        profile = None
                        if (
                            a.profile
                            and run == 1
                            and scenario in a.profile_scenarios.split(",")
                            and system.startswith("template")
                        ):
                            profile = py_spy_profiler(
                                raw_dir, max(1, cfg["durationMs"] / 1000 - 1), f"{system}-{scenario}"
                            )
                        try:
                            res = run_loadgen(
                                running, cfg, time_limit=max(300, cfg.get("timeLimitS", 0)), profile=profile
                            )
                        except RuntimeError as exc:
                            log(f"  {scenario}: {exc}")
                            res = {"error": str(exc)}
                        run_doc.setdefault(scenario, {})[system] = res
                        log(f"  {scenario}: {summary(scenario, res)}")
                        time.sleep(1)
                finally:
                    running.__exit__(None, None, None)
            doc["runs"].append(run_doc)

        if "memory_curve" in scenarios:
            curve_env = parse_env_variant(a.curve_template_env)[1]
            for run in range(1, a.curve_runs + 1):
                shift = (run - 1) % len(systems)
                for system in systems[shift:] + systems[:shift]:
                    env = curve_env if system.startswith("template") else {}
                    log(
                        f"memory_curve run {run}/{a.curve_runs}: {system} x{a.replicas} behind {curve_lbs} HAProxy "
                        f"process(es), steps {curve_sizes(a, curve_clients)}"
                    )
                    try:
                        with Running(
                            system, a.replicas, env, label=f"curve{run}-{system}", lb_nodes=curve_lbs
                        ) as running:
                            res = run_loadgen(
                                running, scenario_cfg("memory_curve", a, curve_clients), time_limit=a.curve_time_limit
                            )
                    except LoadgenError as exc:  # the steps reached still count (e.g. a system that fails at 10,000)
                        res = {"error": str(exc), **exc.partial}
                        log(f"  {system}: {exc}")
                    except RuntimeError as exc:
                        res = {"error": str(exc)}
                    res.update(run=run, system=system, env=env, processes=a.replicas, haproxy_processes=curve_lbs)
                    res["points"] = curve_points(res)
                    doc["memory_curve"].append(res)
                    log(
                        f"  {system}: "
                        + ", ".join(
                            f"{p['clients']}: {p['app_kb_per_conn']} KB/conn ({p['websocket']} ws)"
                            for p in res["points"]
                        )
                        + f"; alive after hold {res.get('alive_after_hold')}"
                    )

        if "scaling" in scenarios:
            procs = [int(x) for x in a.scaling_processes.split(",") if x.strip()]
            for run in range(1, a.scaling_runs + 1):
                for n in procs:
                    log(f"scaling run {run}/{a.scaling_runs}: template with {n} processes")
                    with Running("template", n, label=f"scaling{run}-template-x{n}") as running:
                        res = run_loadgen(running, scenario_cfg("scaling", a, a.scaling_clients), time_limit=300)
                    res.update(run=run, processes=n)
                    doc["scaling"].append(res)
                    log(f"  echo: {summary('echo_ws', res)}")

        if "capacity" in scenarios:
            for variant in a.capacity_variants.split(";"):
                label, env = parse_env_variant(variant)
                log(
                    f"capacity: template x{a.capacity_processes} behind {lb_nodes} HAProxy process(es), "
                    f"{capacity_clients} WebSocket clients, variant {label}"
                )
                with Running(
                    "template", a.capacity_processes, env, label=f"capacity-{label}", lb_nodes=lb_nodes
                ) as running:
                    try:
                        res = run_loadgen(running, scenario_cfg("capacity", a, capacity_clients), time_limit=900)
                    except RuntimeError as exc:
                        res = {"error": str(exc)}
                res.update(
                    variant=label,
                    env=env,
                    processes=a.capacity_processes,
                    haproxy_processes=lb_nodes,
                    haproxy_maxconn=maxconn,
                )
                if "steps" in res and res["steps"]:
                    first, last = res["idle_rss_mb"]["app"], res["steps"][-1]
                    conns = last.get("connected", 0)
                    if conns:
                        res["app_rss_mb_per_1000_conns"] = round((last["rss_mb"]["app"] - first) / conns * 1000, 2)
                        res["total_rss_mb_per_1000_conns"] = round(
                            (sum(last["rss_mb"].values()) - sum(res["idle_rss_mb"].values())) / conns * 1000, 2
                        )
                doc["capacity"].append(res)
                log(
                    f"  capacity {label}: alive {res.get('alive_after_hold')} of {capacity_clients}, "
                    f"failures {res.get('failures')}, app RSS/1000 conns {res.get('app_rss_mb_per_1000_conns')} MB"
                )
    except KeyboardInterrupt:
        log("interrupted: stopping every process")
        cleanup()
        doc["interrupted"] = True
    finally:
        cleanup()
        for snapshot in SNAPSHOTS:
            shutil.rmtree(snapshot, ignore_errors=True)
    doc["medians"] = medians(doc["runs"])
    doc["ratios"] = ratios(doc["medians"])
    if "broadcast_ceiling" in doc["medians"]:
        doc["ceiling_steps"] = ceiling_step_medians(doc["runs"])
    doc["scaling_medians"] = scaling_medians(doc["scaling"])
    doc["memory_curve_medians"] = curve_medians(doc["memory_curve"])
    doc["elapsed_s"] = round(time.monotonic() - t_begin, 1)
    doc["machine"]["loadavg_at_end"] = open("/proc/loadavg").read().split()[:3]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    text = json.dumps(doc, indent=1)
    (raw_dir / f"{stamp}.json").write_text(text)
    (out_dir / "latest.json").write_text(text)
    subprocess.run(
        [
            sys.executable,
            str(BENCH / "report.py"),
            str(out_dir / "latest.json"),
            "--md",
            str(out_dir / "latest.md"),
            "--png",
            str(out_dir / "latest.png"),
        ],
        check=False,
    )
    log(f"done in {doc['elapsed_s']}s: {out_dir / 'latest.json'}, latest.md, latest.png")
    return 1 if doc.get("interrupted") else 0


def scaling_medians(rows):
    out = {}
    for n in sorted({r["processes"] for r in rows}):
        vals = [r for r in rows if r["processes"] == n and "echo_per_s" in r]
        if vals:
            out[str(n)] = {
                "echo_per_s": round(statistics.median(r["echo_per_s"] for r in vals), 1),
                "p99_ms": round(statistics.median(r["latency"]["p99_ms"] for r in vals), 2),
                "server_cpu_pct_of_core": round(
                    statistics.median(r["server"]["total"]["cpu_pct_of_core"] for r in vals), 1
                ),
                "app_rss_mb": round(statistics.median(r["server"]["app"]["rss_mb"] for r in vals), 1),
                "runs": len(vals),
            }
    return out


def summary(scenario, res):
    if "error" in res:
        return "ERROR"
    srv = res.get("server", {}).get("total", {})
    if scenario == "connect":
        return (
            f"{res['connected']}/{res['clients']} connected, {res.get('connects_per_s', 0):.0f}/s, "
            f"p99 {res['connect']['p99_ms']} ms, failed {res['connect_failed']}, instances {res.get('instances')}"
        )
    if scenario in ("echo_ws", "echo_polling"):
        return (
            f"{res['echo_per_s']:.0f} echo/s, p50 {res['latency']['p50_ms']} p99 {res['latency']['p99_ms']} ms, "
            f"server CPU {srv.get('cpu_pct_of_core')}%, loadgen CPU {res.get('loadgen_cpu_pct_of_core')}%, "
            f"ws {res.get('websocket')}/{res['clients']}"
        )
    if scenario == "broadcast":
        return (
            f"delivered {100 * (res['delivered_fraction'] or 0):.1f}% of {res['expected']}, "
            f"p50 {res['latency']['p50_ms']} p99 {res['latency']['p99_ms']} ms, server CPU {srv.get('cpu_pct_of_core')}%"
        )
    if scenario == "broadcast_ceiling":
        tried = ", ".join(
            f"{st['asked_deliveries_per_s']:,}/s: {100 * (st['delivered_fraction'] or 0):.1f}% p99 "
            f"{st['latency']['p99_ms']} ms {'ok' if st['passed'] else 'FAIL'}"
            for st in res.get("steps") or []
        )
        ceiling = res.get("ceiling_deliveries_per_s") or 0
        return f"ceiling {f'{ceiling:,}/s' if ceiling else 'below the first step'} ({tried})"
    return ""


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
