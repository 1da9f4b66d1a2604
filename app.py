"""The Flask-SocketIO application: create_app() builds it from environment variables (application/config.py).

Your code goes in application/ (events, pages, settings); the deployment layer is operations/; patches/ holds
the replacements of library internals (SPEEDUPS=off runs the stock libraries). `python app.py` runs one
development process without a message queue.
"""

import os
import secrets

from flask import Flask
from flask_socketio import SocketIO
from werkzeug.http import dump_cookie

import operations
import patches
from application import auth, demo, emit_cli, events
from application.config import Settings
from operations import health, message_queue, metrics
from operations.engineio_headers import EngineIOHeaders

socketio = SocketIO()  # one per process; create_app() binds it to the Flask app
events.register(socketio)
demo.register(socketio)  # the demo page's /demo namespace
engineio_headers = EngineIOHeaders()  # headers (e.g. cookies) on Engine.IO responses


@engineio_headers.initial_headers
def set_uid_cookie(headers, request):
    """The cookie guide's first example: a cookie set on the handshake only."""
    headers.append(("Set-Cookie", dump_cookie("uid", secrets.token_hex(8), path="/", samesite="Strict")))


@engineio_headers.headers
def set_random_id_cookie(headers, request):
    """The guide's second example: a cookie set on any Engine.IO response to a client that lacks it."""
    if "randomId" not in request.cookies:
        headers.append(("Set-Cookie", dump_cookie("randomId", secrets.token_hex(8), path="/", max_age=86400)))


def create_app(settings=None):
    settings = settings or Settings.from_env()
    operations.setup_logging(settings)  # LOG_FORMAT=text|json, every line names the instance

    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=settings.secret_key or os.urandom(32).hex(),
        SETTINGS=settings,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.cookie.secure,
    )
    app.register_blueprint(health.bp)  # /healthz, /readyz
    app.register_blueprint(metrics.bp)  # /metrics (Prometheus); HAProxy keeps it off the public port
    app.register_blueprint(demo.bp)  # / : the demo page
    app.cli.add_command(emit_cli.emit)  # flask --app app emit EVENT DATA [--room R]
    auth.init_app(app, settings)

    socketio.init_app(
        app,
        client_manager=message_queue.connect(settings),  # Redis (REDIS_URL), or None: one process
        cors_allowed_origins=operations.allowed_origins(settings),  # None: same origin only
        cors_credentials=True,
        ping_interval=settings.ping_interval,
        ping_timeout=settings.ping_timeout,
        max_http_buffer_size=settings.max_http_buffer_size,
        async_handlers=settings.async_handlers,  # a handler that waits holds up none of the client's events
        cookie=settings.cookie.engineio_option(),  # the io cookie HAProxy sticks on (IO_COOKIE_*)
    )
    app.wsgi_app = engineio_headers.wrap(app.wsgi_app)
    operations.install(socketio, app, settings)  # limits, metrics, connection logs, security headers
    patches.install_speedups(socketio, app, settings)  # SPEEDUPS=off: the stock libraries only
    operations.log_effective_config(settings)
    return app


if __name__ == "__main__":
    # Local development: one process, no queue, no HAProxy.
    os.environ.setdefault("APP_ENV", "development")
    dev_app = create_app()
    socketio.run(dev_app, host=os.environ.get("HOST", "127.0.0.1"), port=int(os.environ.get("PORT", "5000")))
