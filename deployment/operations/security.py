"""Security headers on the app's HTTP routes (Flask responses; /socket.io/ is answered by Engine.IO).

`install(app)` (from create_app) registers an `after_request` that sets, unless a view set its own:

- `X-Content-Type-Options: nosniff`
- `X-Frame-Options: DENY` and CSP `frame-ancestors 'none'`: no framing (clickjacking)
- `Referrer-Policy: strict-origin-when-cross-origin`
- `Content-Security-Policy`: scripts, styles, images and fonts from this origin only (a page such as the demo's
  loads its scripts from /demo/static), Socket.IO to this origin (`connect-src 'self'` plus the same host over
  ws:/wss:, which older browsers do not include in 'self'), no plugins, no <base> tricks, forms to
  this origin only.
- `Server` removed (gevent's pywsgi sends none; HAProxy also deletes it on every response).

HSTS is HAProxy's job, only on its TLS listener (haproxy.cfg, `HAPROXY_TLS_CERT`).
"""

from flask import request

STATIC_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "strict-origin-when-cross-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
}
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self'; "
    "connect-src 'self' {ws}; object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
)


def content_security_policy():
    host = request.host
    # a Host with characters that do not belong in a host name gets no ws: source at all
    safe = host and all(c.isalnum() or c in ".-:[]" for c in host)
    return CSP.format(ws=f"ws://{host} wss://{host}" if safe else "").replace("'self' ;", "'self';")


def add_security_headers(response):
    for name, value in STATIC_HEADERS.items():
        response.headers.setdefault(name, value)
    if "Content-Security-Policy" not in response.headers:
        response.headers["Content-Security-Policy"] = content_security_policy()
    response.headers.pop("Server", None)
    return response


def install(app):
    app.after_request(add_security_headers)
