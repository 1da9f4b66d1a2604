#!/usr/bin/env python3
"""Where an open WebSocket connection's memory goes in one instance: bytes per connection by holder.

    .venv/bin/python bench/memory_breakdown.py     # 1,000 clients: bench/results/memory-breakdown.json
    .venv/bin/python bench/memory_breakdown.py --clients 2000 --env READ_BUFFER_SIZE=2048 --out /tmp/x.json

One gunicorn instance exactly as shipped (gunicorn.conf.py, wsgi:app, APP_ENV=production, no Redis: the per-
connection state is the same with it), plus a probe added by a wrapper config: post_worker_init starts
tracemalloc (25 frames) in the worker and a greenlet that, when asked through a file, writes a tracemalloc
snapshot and a census of the live objects. The Node load generator (bench/loadgen) connects the clients straight
to the instance, polling first and then the upgrade, as browsers do, and holds them. Snapshots are taken before
the first client and with every client connected and idle; the difference, divided by the clients, is what one
connection holds:

- *RSS*: the worker's resident memory (what the benchmark measures), and *traced*: what tracemalloc saw (every
  allocation of Python's allocators: objects, buffers, greenlets' saved stacks); the rest is memory Python's
  allocators do not serve (libev watchers, the C allocator's own overhead and fragmentation, freed pages not
  returned).
- *By holder*: each traced block is named by the first frame of its allocation's traceback that a rule below
  recognises (HOLDERS), so "gevent-websocket: WebSocket objects" is what geventwebsocket allocated, wherever
  from; except blocks allocated at the very line where a greenlet now waits (its `gr_frame`): greenlet copies
  its C stack to the heap there when it switches out, so they are counted as saved stacks.
- *Greenlets*: how many are alive per connection and the bytes of C stack each keeps while switched out
  (greenlet's `_stack_saved`), summed.
- *Per-session state*: the sizes (sys.getsizeof, one level deep) of python-engineio's Socket and its queue,
  python-socketio's per-client entries, the saved WSGI environ and the Flask session.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT / "scripts"))
import native_stack  # noqa: E402  (free_port, pid helpers)

LOADGEN = ROOT / "bench" / "loadgen" / "main.js"
DEFAULT_OUT = ROOT / "bench" / "results" / "memory-breakdown.json"

# (holder, substring of a traceback frame's file[:function]): the first frame, from the allocation outwards,
# that matches names the holder. Order matters only within one frame.
HOLDERS = [
    ("tracemalloc probe itself", "memory_breakdown_probe"),
    ("read buffers (pywsgi rfile)", "socket.py:makefile"),
    ("read buffers (pywsgi rfile)", "_pyio"),
    ("gevent-websocket: WebSocket, stream, handler state", "geventwebsocket/"),
    ("python-engineio: per-session Socket, queue, ping timer", "engineio/"),
    ("python-socketio: per-client manager entries (rooms, sids)", "socketio/base_manager"),
    ("python-socketio: per-client manager entries (rooms, sids)", "socketio/"),
    ("Flask-SocketIO / Flask session", "flask_socketio/"),
    ("Flask / Werkzeug request objects", "flask/"),
    ("Flask / Werkzeug request objects", "werkzeug/"),
    ("the template's operations layer (limits, metrics, logs)", "/operations/"),
    ("the template's patches", "/patches/"),
    ("the template's application events", "/application/"),
    ("gevent pywsgi: per-connection WSGI environ and handler", "gevent/pywsgi.py"),
    ("gevent: sockets, watchers, greenlets, queues", "gevent/"),
    ("gunicorn worker", "gunicorn/"),
    ("Python standard library (email headers, json, ...)", "/lib/python3"),
]

PROBE_CONF = r"""
# written by bench/memory_breakdown.py: the shipped gunicorn.conf.py plus a memory probe in the worker
import runpy as _runpy
_shipped = _runpy.run_path({conf!r})
globals().update({{k: v for k, v in _shipped.items() if not k.startswith("__")}})
_shipped_post_worker_init = _shipped["post_worker_init"]


def post_worker_init(worker):
    _shipped_post_worker_init(worker)
    import sys
    sys.path.insert(0, {bench!r})
    import memory_breakdown_probe
    memory_breakdown_probe.start({probe_dir!r})
"""


def probe(probe_dir, name, timeout=180):
    """Ask the worker's probe for a snapshot; return (tracemalloc.Snapshot, census dict)."""
    req = Path(probe_dir) / f"{name}.req"
    done = Path(probe_dir) / f"{name}.json"
    req.write_text(name)
    native_stack.wait_for(done.exists, timeout, f"the memory probe to answer {name}", interval=0.2)
    census = json.loads(done.read_text())
    return tracemalloc.Snapshot.load(str(Path(probe_dir) / f"{name}.snap")), census


SWITCH_HOLDER = "greenlet saved stacks (C stack copied out where a greenlet waits)"


def holder_of(trace, suspended=frozenset()):
    last = trace.traceback[-1] if len(trace.traceback) else None
    if last is not None and (last.filename, last.lineno) in suspended:
        return SWITCH_HOLDER
    for frame in reversed(trace.traceback):  # tracemalloc lists the oldest frame first
        fname = frame.filename.replace("\\", "/")
        for holder, pattern in HOLDERS:
            if pattern in fname:
                return holder
    return "other"


def site_of(trace):
    """The allocation site: the first frame outside Python's standard library, else the first frame."""
    frames = list(reversed(trace.traceback))  # the most recent first
    for frame in frames:
        if "/lib/python3" not in frame.filename or "site-packages" in frame.filename:
            return f"{short(frame.filename)}:{frame.lineno}"
    return f"{short(frames[0].filename)}:{frames[0].lineno}" if frames else "?"


def short(path):
    for marker in ("site-packages/", str(ROOT) + "/", "/lib/python3"):
        if marker in path:
            return path.split(marker, 1)[1] if marker != "/lib/python3" else "stdlib" + path.split(marker, 1)[1][4:]
    return path


def breakdown(before, after, clients, suspended=frozenset()):
    """Traced bytes per connection by holder and by allocation site (after - before, over every trace)."""
    diff = after.compare_to(before, "traceback")
    holders, sites = {}, {}
    for stat in diff:
        if stat.size_diff == 0:
            continue
        holder = holder_of(stat, suspended)
        site = site_of(stat)
        h = holders.setdefault(holder, {"bytes": 0, "blocks": 0})
        h["bytes"] += stat.size_diff
        h["blocks"] += stat.count_diff
        s = sites.setdefault(site, {"bytes": 0, "blocks": 0, "holder": holder})
        s["bytes"] += stat.size_diff
        s["blocks"] += stat.count_diff
    per = lambda d: {  # noqa: E731
        k: {"bytes_per_conn": round(v["bytes"] / clients, 1), "blocks_per_conn": round(v["blocks"] / clients, 2)}
        | ({"holder": v["holder"]} if "holder" in v else {})
        for k, v in sorted(d.items(), key=lambda kv: -kv[1]["bytes"])
    }
    return per(holders), dict(list(per(sites).items())[:40])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--rate", type=int, default=300, help="new clients per second")
    p.add_argument("--settle", type=float, default=5, help="seconds idle before the snapshot with clients")
    p.add_argument("--env", action="append", default=[], help="K=V for the instance (repeatable)")
    p.add_argument("--out", default=str(DEFAULT_OUT))
    a = p.parse_args(argv)

    probe_dir = tempfile.mkdtemp(prefix="memory-breakdown-")
    conf = Path(probe_dir) / "gunicorn_probe.conf.py"
    conf.write_text(PROBE_CONF.format(conf=str(ROOT / "gunicorn.conf.py"), bench=str(BENCH), probe_dir=probe_dir))
    port = native_stack.free_port()
    env = dict(os.environ)
    for key in [k for k in env if k.startswith(("REDIS_", "SPEEDUPS"))]:
        env.pop(key)
    env.update(
        APP_ENV="production",
        SECRET_KEY=secrets.token_hex(32),
        BIND=f"127.0.0.1:{port}",
        INSTANCE_NAME="app1",
        LOG_LEVEL="warning",
        EVENT_RATE="1000000",
        EVENT_BURST="1000000",
        PYTHONUNBUFFERED="1",
    )
    env.update(dict(kv.split("=", 1) for kv in a.env))
    gunicorn = ROOT / ".venv" / "bin" / "gunicorn"
    log = open(Path(probe_dir) / "gunicorn.log", "w")
    server = subprocess.Popen(
        [str(gunicorn), "--config", str(conf)], cwd=ROOT, env=env, stdout=log, stderr=log, start_new_session=True
    )
    loadgen = None
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while not (Path(probe_dir) / "ready").exists():
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit(f"the instance did not start: {Path(probe_dir) / 'gunicorn.log'}")
            time.sleep(0.2)
        time.sleep(2)
        before, census0 = probe(probe_dir, "before")
        cfg = {
            "scenario": "capacity",
            "url": url,
            "clients": a.clients,
            "workers": 2,
            "rate": a.rate,
            "waitUpgrade": True,
            "upgradeTimeoutMs": 20000,
            "steps": [a.clients],
            "stepHoldMs": 1000,
            "holdMs": int(1000 * (a.settle + 120)),  # ended by us once the snapshot is taken
            "connectTimeoutMs": 20000,
            "ackTimeoutMs": 20000,
            "timeLimitS": 600,
        }
        loadgen = subprocess.Popen(
            ["node", str(LOADGEN), json.dumps(cfg)],
            cwd=ROOT / "bench",
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        step = None
        for line in loadgen.stdout:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if msg.get("event") == "step":
                step = msg
                break
            if msg.get("event") == "error":
                raise SystemExit(f"loadgen: {msg}")
        if step is None:
            raise SystemExit("loadgen ended before its clients were connected")
        time.sleep(a.settle)
        after, census1 = probe(probe_dir, "after")
    finally:
        for proc in (loadgen, server):
            if proc and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL if proc is loadgen else signal.SIGINT)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
        log.close()

    n = step["websocket"] or step["connected"]
    suspended = {tuple(x) for x in census1.get("suspended_at", [])}
    holders, sites = breakdown(before, after, n, suspended)
    per = lambda key: round((census1[key] - census0[key]) / n, 1)  # noqa: E731
    doc = {
        "command": "bench/memory_breakdown.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "clients": a.clients,
        "connected": step["connected"],
        "websocket": step["websocket"],
        "env": dict(kv.split("=", 1) for kv in a.env),
        "rss_bytes_per_conn": per("rss_bytes"),
        "traced_bytes_per_conn": per("traced_bytes"),
        "untraced_bytes_per_conn": round(per("rss_bytes") - per("traced_bytes"), 1),
        "greenlets_per_conn": round((census1["greenlets"] - census0["greenlets"]) / n, 2),
        "greenlet_stack_bytes_per_conn": per("greenlet_stack_bytes"),
        "greenlet_stack_bytes_by_function": {
            k: round((v - census0["greenlet_stacks_by_function"].get(k, 0)) / n, 1)
            for k, v in sorted(census1["greenlet_stacks_by_function"].items(), key=lambda kv: -kv[1])
        },
        "session_state_bytes_per_conn": {
            k: round(v / max(1, census1["sessions"]), 1) for k, v in census1["session_state"].items()
        },
        "objects_per_conn": {
            k: {"count": round(v["count"] / n, 2), "bytes": round(v["bytes"] / n, 1)}
            for k, v in sorted(
                (
                    (
                        t,
                        {
                            "count": c["count"] - census0["types"].get(t, {}).get("count", 0),
                            "bytes": c["bytes"] - census0["types"].get(t, {}).get("bytes", 0),
                        },
                    )
                    for t, c in census1["types"].items()
                ),
                key=lambda kv: -kv[1]["bytes"],
            )[:25]
        },
        "traced_by_holder": holders,
        "traced_by_site": sites,
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(
        f"{n} WebSocket clients: RSS {doc['rss_bytes_per_conn'] / 1024:.1f} KB per connection, traced "
        f"{doc['traced_bytes_per_conn'] / 1024:.1f} KB, greenlets {doc['greenlets_per_conn']} "
        f"({doc['greenlet_stack_bytes_per_conn'] / 1024:.1f} KB of saved stack); {out}"
    )
    for holder, v in holders.items():
        print(f"  {v['bytes_per_conn'] / 1024:7.2f} KB  {holder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
