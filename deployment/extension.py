"""Deployment, the deployment layer's Flask extension (deployment/__init__.py says what it adds)."""

import os

from flask import Flask

from deployment.operations import (
    allowed_origins,
    auth,
    emit_cli,
    health,
    log_effective_config,
    message_queue,
    metrics,
    probes,
    setup_logging,
)
from deployment.operations import install as install_operations
from deployment.operations.engineio_headers import EngineIOHeaders
from deployment.operations.realtime_flask import RealtimeFlask
from deployment.operations.speedups import install_speedups
from deployment.settings import ConfigError, Settings

__all__ = ["ConfigError", "Deployment", "EngineIOHeaders", "RealtimeFlask", "Settings"]


class Deployment:
    """The Flask extension of the deployment layer: one per app, `init_app(app, socketio, settings=None)`."""

    def __init__(self, app=None, socketio=None, settings=None):
        self.settings = None
        # headers (e.g. cookies) on Engine.IO responses: @deployment.engineio_headers.initial_headers
        self.engineio_headers = EngineIOHeaders()
        if app is not None:
            self.init_app(app, socketio, settings)

    def init_app(self, app: Flask, socketio, settings: Settings | None = None):
        """Binds `socketio` to `app` for this deployment. `settings`: Settings.from_env() unless given."""
        if "deployment" in app.extensions:
            raise RuntimeError("Deployment.init_app() was already called for this app")
        settings = settings or Settings.from_env()
        self.settings = settings
        setup_logging(settings)  # LOG_FORMAT=text|json, every line names the instance
        app.extensions["deployment"] = self
        app.config.update(
            SETTINGS=settings,
            SECRET_KEY=settings.secret_key or os.urandom(32).hex(),
            SESSION_COOKIE_SAMESITE="Lax",
            SESSION_COOKIE_SECURE=settings.cookie.secure,
        )
        app.register_blueprint(health.bp)  # /healthz, /readyz
        app.register_blueprint(metrics.bp)  # /metrics (Prometheus); HAProxy keeps it off the public port
        app.cli.add_command(emit_cli.emit)  # flask --app app emit EVENT DATA [--room R]
        auth.init_app(app, settings)  # /login, /logout, /me; REQUIRE_LOGIN refuses anonymous connections
        if settings.probes:
            probes.register(socketio, self.engineio_headers)  # echo, whoami, broadcast, join/leave/say, 2 cookies
        socketio.init_app(
            app,
            client_manager=message_queue.connect(settings),  # Redis (REDIS_URL), or None: one process
            cors_allowed_origins=allowed_origins(settings),  # None: same origin only
            cors_credentials=True,
            ping_interval=settings.ping_interval,
            ping_timeout=settings.ping_timeout,
            max_http_buffer_size=settings.max_http_buffer_size,
            async_handlers=settings.async_handlers,  # a handler that waits holds up none of the client's events
            cookie=settings.cookie.engineio_option(),  # the io cookie HAProxy sticks on (IO_COOKIE_*)
        )
        app.wsgi_app = self.engineio_headers.wrap(app.wsgi_app)
        install_operations(socketio, app, settings)  # login gate, limits, metrics, logs, headers, recovery
        install_speedups(socketio, app, settings)  # SPEEDUPS=off: the stock libraries only
        log_effective_config(settings)
        return app
