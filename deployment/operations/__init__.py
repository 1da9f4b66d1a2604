"""The operations of the deployment layer: sign-in, per-client limits, metrics and connection logs, security
headers, the Redis message queue, health checks, graceful stop, recovery. deployment.extension calls
`install()` once; gunicorn.conf.py adds the graceful stop and the access log to each worker."""

import json
import logging

from deployment.operations import auth, instrument, limits, logs, recovery, security

log = logging.getLogger("app")


def allowed_origins(settings):
    """python-engineio's cors_allowed_origins: None = same origin only (an empty list would disable the check);
    with CORS_ALLOWED_ORIGINS, those origins and still the page's own."""
    listed = settings.cors_allowed_origins
    if not listed:
        return None

    def check(origin, environ):
        if origin in listed:
            return True
        host = environ.get("HTTP_X_FORWARDED_HOST", environ.get("HTTP_HOST", "")).split(",")[0].strip()
        scheme = environ.get("HTTP_X_FORWARDED_PROTO", environ.get("wsgi.url_scheme", "http")).split(",")[0]
        return origin == f"{scheme.strip()}://{host}"

    return check


def install(socketio, app, settings):
    """After socketio.init_app(app): limits (EVENT_RATE, MAX_ROOMS_PER_CLIENT, bad packets), security headers,
    metrics, one log line per connection event, and connection state recovery (CONNECTION_STATE_RECOVERY)."""
    limits.install(socketio, settings)
    recovery.install(socketio, settings)
    security.install(app)
    auth.install(socketio, app, settings)  # before instrument: its connect wrapper counts the gate's refusals
    instrument.install(socketio, app)


def log_effective_config(settings):
    log.info("effective config: %s", json.dumps(settings.public_dict(), sort_keys=True))


setup_logging = logs.setup  # LOG_FORMAT=text|json; every line names the instance
