"""python-engineio works out the origins it allows (by default the request's own: two URLs formatted from the
environ) for the CORS headers of every HTTP response, also when the request has no Origin header and the
answer is not read: about 1.5% of a long-polling worker (py-spy; Node clients and same-origin GETs send none).
Here that work is skipped when there is no Origin header. Its two callers (handle_request's origin check and
_cors_headers) read the answer only when there is one, so responses do not change; a CORS_ALLOWED_ORIGINS
callable is then not called with origin None either."""

from engineio.base_server import BaseServer

ENGINEIO_CORS_ALLOWED_ORIGINS = BaseServer._cors_allowed_origins


def cors_allowed_origins(server, environ):
    if "HTTP_ORIGIN" not in environ:
        return []  # unread: both callers look at it only with an Origin header
    return ENGINEIO_CORS_ALLOWED_ORIGINS(server, environ)


VERIFIED = {"python-engineio": ("4.15.1",)}
REPLACES = ["eio._cors_allowed_origins"]


def install(socketio, app, settings):
    install_on(socketio.server.eio)


def install_on(eio_server):
    """For this python-engineio server only (its class keeps engineio's method)."""
    eio_server._cors_allowed_origins = cors_allowed_origins.__get__(eio_server)
