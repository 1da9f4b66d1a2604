"""gunicorn settings for one Socket.IO instance: every knob from an environment variable with a default.

One process serves one instance with exactly one worker: HAProxy can only stick a client to an
address, and gunicorn spreads one address's connections over its workers without any stickiness.
Run more instances (docker compose replicas, or scripts/stack's APP_REPLICAS) to use more cores.
"""

import importlib.util
import json
import os
import sys

# python-engineio uses gevent-websocket whenever it is installed (plain `-k gevent` then fails every WebSocket
# request), else simple-websocket under plain `-k gevent`. find_spec: nothing imported in the master.
GEVENT_WEBSOCKET = importlib.util.find_spec("geventwebsocket") is not None
WEBSOCKET_WORKER = "geventwebsocket.gunicorn.workers.GeventWebSocketWorker" if GEVENT_WEBSOCKET else "gevent"

host = os.getenv("HOST", "0.0.0.0")
port = os.getenv("PORT", "8000")
bind = [os.getenv("BIND") or f"{host}:{port}"]
wsgi_app = "wsgi:app"
worker_class = WEBSOCKET_WORKER
workers = 1
# Connections with a greenlet: requests, polling clients, WebSockets while read (an idle one holds none,
# deployment/patches/idle_websockets.py). HAProxy's APP_MAXCONN, kept below it, caps an instance's open WebSockets.
worker_connections = int(os.getenv("WORKER_CONNECTIONS", "5000"))
# The gevent loop heartbeats while sockets are open, so this only catches a truly stuck worker.
timeout = int(os.getenv("TIMEOUT", "60"))
graceful_timeout = int(os.getenv("GRACEFUL_TIMEOUT", "20"))
keepalive = int(os.getenv("KEEP_ALIVE", "75"))
loglevel = os.getenv("LOG_LEVEL", "info").lower()
# Off by default: HAProxy logs every request already (option httplog), and a line per poll costs CPU.
accesslog = os.getenv("ACCESS_LOG", "") or None
errorlog = os.getenv("ERROR_LOG", "-")
# HAProxy's address is the peer; the client's is in X-Forwarded-For.
access_log_format = os.getenv(
    "ACCESS_LOG_FORMAT",
    '%({x-forwarded-for}i)s "%(r)s" %(s)s %(b)s %(M)sms "%(a)s"',
)
# Restarting the only worker would drop every socket of this instance.
max_requests = 0
# preload_app would import the app (and its Redis client) before gevent patches the worker.
preload_app = False
# gunicorn's control socket defaults to one shared path per user: several instances on one host clash.
control_socket_disable = True
worker_tmp_dir = os.getenv("WORKER_TMP_DIR") or ("/dev/shm" if os.path.isdir("/dev/shm") else None)
proc_name = os.getenv("INSTANCE_NAME") or None


def on_starting(server):
    """Refuse more than one worker, whatever WEB_CONCURRENCY, GUNICORN_CMD_ARGS or -w asked for."""
    cfg = server.cfg
    if cfg.workers != 1:
        sys.exit(
            f"gunicorn.conf.py: refusing to start {cfg.workers} workers (asked by -w, WEB_CONCURRENCY or "
            "GUNICORN_CMD_ARGS). Socket.IO long-polling needs every request of a client in one process and "
            "gunicorn cannot make its workers sticky: run more instances behind HAProxy instead."
        )
    if cfg.worker_class_str != WEBSOCKET_WORKER:
        sys.exit(
            f"gunicorn.conf.py: refusing worker class {cfg.worker_class_str!r}: with gevent-websocket "
            f"{'installed' if GEVENT_WEBSOCKET else 'not installed (simple-websocket)'}, WebSockets only work "
            f"under {WEBSOCKET_WORKER}."
        )
    if cfg.max_requests:
        sys.exit("gunicorn.conf.py: refusing max_requests: restarting the only worker drops every client.")
    if cfg.preload_app:
        sys.exit("gunicorn.conf.py: refusing preload_app: it imports the app before gevent patches it.")
    # Check the app's settings here, in the master, so a bad one is one clear line, not a boot loop.
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from deployment.patches import connection_recovery  # imports no library: safe in the master
    from deployment.settings import ConfigError, Settings

    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        sys.exit(f"configuration error: {exc}")
    refusal = settings.connection_state_recovery and connection_recovery.refusal(settings.redis_url)
    if refusal:
        sys.exit(f"configuration error: {refusal}")
    effective = {
        "bind": cfg.bind,
        "worker_class": cfg.worker_class_str,
        "workers": cfg.workers,
        "worker_connections": cfg.worker_connections,
        "timeout": cfg.timeout,
        "graceful_timeout": cfg.graceful_timeout,
        "keepalive": cfg.keepalive,
        "loglevel": cfg.loglevel,
        "accesslog": cfg.accesslog,
    }
    print(f"gunicorn effective config: {json.dumps(effective, sort_keys=True)}", file=sys.stderr, flush=True)


def post_worker_init(worker):
    """SIGTERM drains before gunicorn stops: readiness off, then sockets closed over a spread
    (deployment/operations/lifecycle.py); requests go to gunicorn's access log (deployment/operations/access_log.py)."""
    from deployment.operations import access_log, lifecycle

    lifecycle.install(worker)
    access_log.install(worker)
