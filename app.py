"""The Flask-SocketIO application.

create_app() builds it from environment variables (realtime/config.py); `python app.py` runs one
development process without a message queue. Add your own routes and events here or in new modules.
"""

import json
import logging
import os
import secrets

from werkzeug.http import dump_cookie

from realtime import (
    auth,
    connection_memory,
    demo,
    emit_cli,
    engineio_cors,
    events,
    health,
    inline_handlers,
    instrument,
    json_codec,
    limits,
    logs,
    message_queue,
    metrics,
    pywsgi_speedups,
    query_string,
    security,
    websocket_speedups,
    websocket_writes,
)
from realtime.config import Settings
from realtime.engineio_headers import EngineIOHeaders
from realtime.event_context import RealtimeFlask, RealtimeSocketIO
from realtime.session_cache import CachedSerializerSessionInterface

log = logging.getLogger("app")

# One SocketIO object per process; create_app() binds it to the Flask app.
socketio = RealtimeSocketIO()  # Flask-SocketIO, with a cheaper context setup per event
events.register(socketio)
demo.register(socketio)  # the demo page's /demo namespace
# Headers (e.g. cookies) for Engine.IO responses; see realtime/engineio_headers.py.
engineio_headers = EngineIOHeaders()


@engineio_headers.initial_headers
def set_uid_cookie(headers, request):
    """The cookie guide's first example: a cookie set on the handshake only."""
    headers.append(("Set-Cookie", dump_cookie("uid", secrets.token_hex(8), path="/", samesite="Strict")))


@engineio_headers.headers
def set_random_id_cookie(headers, request):
    """The guide's second example: a cookie set on any Engine.IO response to a client that lacks it."""
    if "randomId" not in request.cookies:
        headers.append(("Set-Cookie", dump_cookie("randomId", secrets.token_hex(8), path="/", max_age=86400)))


def same_origin_or_listed(allowed):
    """Origin check that keeps same-origin pages working when extra origins are listed."""

    def check(origin, environ):
        if origin in allowed:
            return True
        host = environ.get("HTTP_X_FORWARDED_HOST", environ.get("HTTP_HOST", "")).split(",")[0].strip()
        scheme = environ.get("HTTP_X_FORWARDED_PROTO", environ.get("wsgi.url_scheme", "http")).split(",")[0]
        return origin == f"{scheme.strip()}://{host}"

    return check


def create_app(settings=None):
    settings = settings or Settings.from_env()
    logs.setup(settings)  # LOG_FORMAT=text|json, every line names the instance

    app = RealtimeFlask(__name__)  # Flask, with a cheaper request context per Socket.IO event
    app.session_interface = CachedSerializerSessionInterface()  # hot path: one opening per event
    app.config.update(
        SECRET_KEY=settings.secret_key or os.urandom(32).hex(),
        SETTINGS=settings,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.cookie.secure,
    )
    app.register_blueprint(health.bp)
    app.register_blueprint(metrics.bp)  # /metrics (Prometheus); HAProxy keeps it off the public port
    app.register_blueprint(demo.bp)  # / : the demo page
    app.cli.add_command(emit_cli.emit)  # flask --app app emit EVENT DATA [--room R]
    auth.init_app(app, settings)

    socketio.init_app(
        app,
        # Redis (REDIS_URL) or None: waits for Redis at start, rides out outages (realtime/message_queue.py)
        client_manager=message_queue.connect(settings),
        # None = same origin only (python-engineio); an empty list would disable the check entirely
        cors_allowed_origins=same_origin_or_listed(settings.cors_allowed_origins)
        if settings.cors_allowed_origins
        else None,
        cors_credentials=True,
        ping_interval=settings.ping_interval,
        ping_timeout=settings.ping_timeout,
        max_http_buffer_size=settings.max_http_buffer_size,
        # a handler that waits never holds up the client's other events (ASYNC_HANDLERS; and INLINE_HANDLERS below)
        async_handlers=settings.async_handlers,
        json=json_codec,  # orjson, falling back to json where the two would differ (realtime/json_codec.py)
        cookie=settings.cookie.engineio_option(),
    )
    app.wsgi_app = engineio_headers.wrap(app.wsgi_app)
    limits.install(socketio, settings)  # per-connection rate limit, room cap, bad packets (realtime/limits.py)
    security.install(app)  # security headers on HTTP routes (realtime/security.py)
    instrument.install(socketio, app)  # metrics and connection log lines
    websocket_speedups.install()  # C masking and UTF-8 checks, one send() per frame (gevent-websocket)
    pywsgi_speedups.install()  # pywsgi: plain request headers without the email package, fewer send() calls
    query_string.install()  # python-engineio's parse_qs: a split when the query string has nothing to unquote
    engineio_cors.install(socketio.server.eio)  # no allowed-origins list made for requests without an Origin
    connection_memory.install(socketio, settings)  # ping timers, read buffers, kept headers and environs
    websocket_writes.install(settings)  # packets for idle WebSockets go out from the loop, not via writer greenlets
    inline_handlers.install(socketio.server, settings)  # a WebSocket's events run in its reader until one waits
    log.info("effective config: %s", json.dumps(settings.public_dict(), sort_keys=True))
    return app


if __name__ == "__main__":
    # Local development: one process, no queue, no HAProxy.
    os.environ.setdefault("APP_ENV", "development")
    dev_app = create_app()
    socketio.run(dev_app, host=os.environ.get("HOST", "127.0.0.1"), port=int(os.environ.get("PORT", "5000")))
