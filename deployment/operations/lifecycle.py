"""Graceful stop of one instance: what happens between SIGTERM and exit.

gunicorn alone would close the listening socket at once and then wait `graceful_timeout` for sockets
that never end by themselves, so HAProxy would mark the instance DOWN and cut every socket at the same
moment (`on-marked-down shutdown-sessions`). Instead, `install(worker)` (gunicorn.conf.py's
`post_worker_init`) replaces the worker's SIGTERM handler with this sequence:

1. **Drain** (`DRAIN_SECONDS`, default 3): /readyz reports draining. HAProxy's check asks for
   `/readyz?draining=404`, and `http-check disable-on-404` turns the 404 into a soft stop (NOLB):
   no new clients, while the clients already here keep reaching their session. The listener stays open.
2. **Spread** (`CLOSE_SPREAD_SECONDS`, default 10): the open Engine.IO connections are closed one by one,
   evenly over the window. They are aborted without a CLOSE packet, so clients treat it as a lost
   transport and reconnect (python-socketio and the JS client do not reconnect after a server-initiated
   CLOSE/DISCONNECT). Their new handshake carries no sid, which HAProxy never routes by cookie
   (`ignore-persist`), so it lands on another instance.
3. **Stop**: gunicorn's own shutdown: the listener closes and the last requests finish; idle keep-alive
   connections from HAProxy (which would hold gunicorn until `graceful_timeout`) are closed after at
   most 1 second, and the worker exits. (To find them, gunicorn's plain gevent worker needs a replaced
   gunicorn internal, deployment/patches/gunicorn_servers.py: with an unverified gunicorn version they are left to
   `graceful_timeout`.)

Both durations are squeezed to fit inside `graceful_timeout` minus 3 seconds (a warning says so), so
gunicorn never has to kill the worker; compose's `stop_grace_period` (30s) is above `GRACEFUL_TIMEOUT` (20s).
A second SIGTERM is ignored; SIGINT/SIGQUIT still stop at once.
"""

from __future__ import annotations

import logging
import signal
import time

import gevent

from deployment.operations import health
from deployment.patches import gunicorn_servers

log = logging.getLogger("realtime.lifecycle")  # the logger name users filter on, kept across the move

EXIT_MARGIN = 3.0  # seconds kept for gunicorn's own shutdown after the spread


def fit(drain, spread, graceful_timeout):
    """(drain, spread) shortened, if needed, so that drain + spread <= graceful_timeout - EXIT_MARGIN."""
    budget = max(0.0, graceful_timeout - EXIT_MARGIN)
    if drain + spread <= budget:
        return drain, spread
    drain = min(drain, budget / 2)
    return drain, max(0.0, budget - drain)


def close_spread(eio, seconds):
    """Aborts every open Engine.IO connection, evenly over `seconds`; returns how many were closed."""
    sids = list(eio.sockets)
    start = time.monotonic()
    closed = 0
    for index, sid in enumerate(sids):
        delay = start + seconds * index / max(1, len(sids)) - time.monotonic()
        if delay > 0:
            gevent.sleep(delay)
        closed += abort(eio, sid)
    # connections opened meanwhile (a client that reached this instance directly): close them too
    for sid in list(eio.sockets):
        closed += abort(eio, sid)
    return closed


def abort(eio, sid):
    sock = eio.sockets.get(sid)
    if sock is None or sock.closed or sock.closing:
        return 0
    try:
        sock.close(wait=False, abort=True)
    except Exception:  # noqa: BLE001 - a socket that breaks while closing is closed enough
        log.debug("closing %s failed", sid, exc_info=True)
    return 1


def busy(servers):
    return sum(server.pool.size - server.pool.free_count() for server in servers)


def drain_and_stop(worker, eio, servers, drain, spread):
    started = time.monotonic()
    health.draining.set()
    log.warning(
        "SIGTERM: draining: /readyz reports draining, %d open connections are closed over %.0fs "
        "starting in %.0fs, then gunicorn stops",
        len(eio.sockets),
        spread,
        drain,
    )
    gevent.sleep(drain)
    closed = close_spread(eio, spread)
    log.warning("drained: %d connections closed in %.1fs since SIGTERM; stopping", closed, time.monotonic() - started)
    worker.alive = False  # gunicorn's run loop closes the listener and waits for the requests still running
    deadline = time.monotonic() + 1.0
    while busy(servers) and time.monotonic() < deadline:
        gevent.sleep(0.1)
    if busy(servers):
        # what is left are idle keep-alive connections from HAProxy: a new request never comes on them
        log.info("closing %d idle connections", busy(servers))
        for server in servers:
            server.stop(timeout=0.5)


def install(worker):
    """gunicorn post_worker_init hook: SIGTERM drains first (see the module docstring)."""
    app = worker.wsgi
    settings = app.config["SETTINGS"]
    eio = app.extensions["socketio"].server.eio
    drain, spread = fit(settings.drain_seconds, settings.close_spread_seconds, worker.cfg.graceful_timeout)
    if (drain, spread) != (settings.drain_seconds, settings.close_spread_seconds):
        log.warning(
            "DRAIN_SECONDS=%g + CLOSE_SPREAD_SECONDS=%g do not fit in GRACEFUL_TIMEOUT=%d minus %gs: using %.1f + %.1f",
            settings.drain_seconds,
            settings.close_spread_seconds,
            worker.cfg.graceful_timeout,
            EXIT_MARGIN,
            drain,
            spread,
        )
    state = {"started": False}
    servers = []  # gunicorn's gevent servers, made in worker.run() after this hook: record them
    if worker.server_class is None:
        # plain `-k gevent` (simple-websocket, no gevent-websocket) makes gevent StreamServers: a replaced
        # gunicorn internal, pinned (deployment/patches/gunicorn_servers.py); with another gunicorn, servers stays empty
        gunicorn_servers.install(servers.append)
    else:
        # gevent-websocket's worker: server_class is the worker attribute gunicorn itself reads
        class RecordedServer(worker.server_class):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                servers.append(self)

        worker.server_class = RecordedServer

    def on_sigterm(signum, frame):
        if state["started"]:
            return
        state["started"] = True
        # out of the signal handler: the drain sleeps (as gunicorn's own handle_quit does)
        gevent.spawn(drain_and_stop, worker, eio, servers, drain, spread)

    signal.signal(signal.SIGTERM, on_sigterm)
    signal.siginterrupt(signal.SIGTERM, False)  # as gunicorn sets it: no EINTR in running requests
