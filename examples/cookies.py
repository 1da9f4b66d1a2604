# examples/cookies.py: cookies of your own on Engine.IO responses (Node's `initial_headers` and `headers` events).
# `request` is a werkzeug Request; `headers` is the response's list of (name, value) pairs.

import secrets

from werkzeug.http import dump_cookie

from application.extensions import deployment

YEAR = 365 * 24 * 3600


@deployment.engineio_headers.initial_headers  # the polling handshake only
def set_visit_cookie(headers, request):
    """On the polling handshake only: a new id for each Socket.IO connection."""
    headers.append(("Set-Cookie", dump_cookie("visit", secrets.token_hex(8), path="/", samesite="Strict")))


@deployment.engineio_headers.headers  # every Engine.IO HTTP response
def set_visitor_cookie(headers, request):
    """On every Engine.IO HTTP response to a client that lacks it: an id kept for a year."""
    if "visitor" not in request.cookies:
        cookie = dump_cookie("visitor", secrets.token_hex(8), path="/", max_age=YEAR, httponly=True, samesite="Lax")
        headers.append(("Set-Cookie", cookie))
