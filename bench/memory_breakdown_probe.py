"""The worker side of bench/memory_breakdown.py (imported only by its wrapper gunicorn config, never by the app):
tracemalloc from post_worker_init on, and a greenlet that writes a snapshot and a census of live objects when
bench/memory_breakdown.py asks for one (a NAME.req file in the probe folder)."""

import gc
import json
import os
import sys
import tracemalloc

import gevent
import greenlet

PAGE = os.sysconf("SC_PAGE_SIZE")


def start(probe_dir):
    tracemalloc.start(25)
    gevent.spawn(watch, probe_dir)
    open(os.path.join(probe_dir, "ready"), "w").close()


def watch(probe_dir):
    while True:
        for name in os.listdir(probe_dir):
            if name.endswith(".req"):
                tag = name[:-4]
                os.remove(os.path.join(probe_dir, name))
                census = take(probe_dir, tag)
                tmp = os.path.join(probe_dir, f"{tag}.json.tmp")
                with open(tmp, "w") as f:
                    json.dump(census, f)
                os.rename(tmp, os.path.join(probe_dir, f"{tag}.json"))
        gevent.sleep(0.2)


def shallow(obj):
    """sys.getsizeof of an object, its __dict__, and of what the dict (or the object, if a dict) holds, one level."""
    size = sys.getsizeof(obj)
    d = obj if isinstance(obj, dict) else getattr(obj, "__dict__", None)
    if d is not None and d is not obj:
        size += sys.getsizeof(d)
    if isinstance(d, dict):
        size += sum(sys.getsizeof(k) + sys.getsizeof(v) for k, v in d.items())
    return size


def run_name(g):
    run = getattr(g, "_run", None) or getattr(g, "run", None)
    target = getattr(run, "__func__", run)
    return getattr(target, "__qualname__", type(run).__name__)


def session_state():
    """Per-session holders of python-engineio, python-socketio, the saved environ and Flask session, summed."""
    app_module = sys.modules.get("app")
    if app_module is None:
        return 0, {}
    sio = app_module.socketio.server
    eio = sio.eio
    out = {
        "python-engineio Socket (object and its attributes)": 0,
        "python-engineio Socket's packet queue": 0,
        "python-socketio saved WSGI environ (dict, keys and values)": 0,
        "the request's wsgi.input and wsgi.websocket objects": 0,
        "Flask-SocketIO managed Flask session (saved_session)": 0,
    }
    for sock in list(eio.sockets.values()):
        out["python-engineio Socket (object and its attributes)"] += shallow(sock)
        queue = getattr(sock, "queue", None)
        if queue is not None:
            out["python-engineio Socket's packet queue"] += shallow(queue)
    for environ in list(sio.environ.values()):
        out["python-socketio saved WSGI environ (dict, keys and values)"] += shallow(environ)
        for key in ("wsgi.input", "wsgi.websocket"):
            if key in environ:
                out["the request's wsgi.input and wsgi.websocket objects"] += shallow(environ[key])
        if "saved_session" in environ:
            out["Flask-SocketIO managed Flask session (saved_session)"] += shallow(environ["saved_session"])
    manager = sio.manager
    total = 0
    for ns_rooms in manager.rooms.values():
        total += sys.getsizeof(ns_rooms)
        for room in ns_rooms.values():
            total += shallow(room)
            total += sum(shallow(v) for v in vars(room).values() if isinstance(v, dict))
    total += shallow(manager.eio_to_sid)
    out["python-socketio manager: rooms and sid maps"] = total
    return len(eio.sockets), out


def take(probe_dir, tag):
    gc.collect()
    traced = tracemalloc.get_traced_memory()[0]
    overhead = tracemalloc.get_tracemalloc_memory()
    with open("/proc/self/statm") as f:
        rss = int(f.read().split()[1]) * PAGE
    types, greenlets, stack, by_function, suspended = {}, 0, 0, {}, set()
    for obj in gc.get_objects():
        t = type(obj)
        key = f"{t.__module__}.{t.__qualname__}"
        entry = types.setdefault(key, {"count": 0, "bytes": 0})
        entry["count"] += 1
        entry["bytes"] += sys.getsizeof(obj)
        if isinstance(obj, greenlet.greenlet):
            greenlets += 1
            frame = obj.gr_frame  # where it waits: its saved stack was copied out there
            if frame is not None:
                suspended.add((frame.f_code.co_filename, frame.f_lineno))
            saved = obj._stack_saved
            stack += saved
            name = run_name(obj)
            by_function[name] = by_function.get(name, 0) + saved
    sessions, state = session_state()
    snapshot = tracemalloc.take_snapshot()
    snapshot.dump(os.path.join(probe_dir, f"{tag}.snap"))
    del snapshot
    return {
        # tracemalloc's own bookkeeping lives in the worker's RSS too: left out
        "rss_bytes": rss - overhead,
        "tracemalloc_overhead_bytes": overhead,
        "traced_bytes": traced,
        "greenlets": greenlets,
        "greenlet_stack_bytes": stack,
        "greenlet_stacks_by_function": by_function,
        "suspended_at": sorted(suspended),
        "sessions": sessions,
        "session_state": state,
        "types": types,
    }
