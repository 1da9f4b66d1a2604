"""Extra HTTP headers (e.g. application cookies) on Engine.IO responses: Flask's version of the Node
server's `io.engine.on("initial_headers")` and `io.engine.on("headers")`.

    @engineio_headers.initial_headers          # the polling handshake only
    def set_uid(headers, request): headers.append(("Set-Cookie", ...))

    @engineio_headers.headers                  # every Engine.IO HTTP response (handshake and polls)
    def set_random_id(headers, request): ...

`request` is a werkzeug Request (request.cookies, request.headers, request.args). A hook may do
blocking I/O: under gevent it only pauses this request.

Not covered: the WebSocket upgrade's `101 Switching Protocols`. gevent-websocket's worker sends it
before the application runs, so no WSGI middleware can add headers to it. Set cookies on the polling
handshake instead (clients start with polling by default), or add them in HAProxy
(`http-response add-header Set-Cookie ... if { status 101 }`).
"""

from urllib.parse import parse_qs  # as python-engineio reads the query string

from werkzeug.http import parse_cookie
from werkzeug.utils import cached_property
from werkzeug.wrappers import Request


class HookRequest(Request):
    """werkzeug's Request, made when a hook first uses more than `environ` and `cookies` (werkzeug's __init__
    decodes the path, wraps the headers, ...: about 5% of a long-polling worker, for hooks that read only a
    cookie), and with `cookies` read from the one Cookie header a WSGI environ holds (HTTP_COOKIE): werkzeug
    scans every environ key for it (py-spy)."""

    def __init__(self, environ):
        self.environ = environ

    def __getattr__(self, name):  # an attribute werkzeug's __init__ sets: make it now, once
        if "headers" in self.__dict__:
            raise AttributeError(name)
        Request.__init__(self, self.environ)
        return getattr(self, name)

    @cached_property
    def cookies(self):
        return parsed_cookies(self.environ.get("HTTP_COOKIE", ""), self.dict_storage_class)


PARSED_COOKIES = {}  # Cookie header -> its (immutable) parse: a polling client sends the same one every time
PARSED_COOKIES_KEPT = 2000


def parsed_cookies(header, cls):
    key = (header, cls)
    parsed = PARSED_COOKIES.get(key)
    if parsed is None:
        parsed = parse_cookie(header, cls=cls)
        if len(PARSED_COOKIES) >= PARSED_COOKIES_KEPT:
            PARSED_COOKIES.clear()
        PARSED_COOKIES[key] = parsed
    return parsed


def is_handshake(environ):
    """An Engine.IO handshake: a GET without a session id, as python-engineio reads the query string."""
    return environ.get("REQUEST_METHOD") == "GET" and "sid" not in parse_qs(environ.get("QUERY_STRING", ""))


class EngineIOHeaders:
    def __init__(self):
        self.handshake_hooks = []
        self.request_hooks = []

    def initial_headers(self, hook):
        self.handshake_hooks.append(hook)
        return hook

    def headers(self, hook):
        self.request_hooks.append(hook)
        return hook

    def wrap(self, wsgi_app, path="/socket.io/"):
        """WSGI middleware around Flask-SocketIO's, adding the hooks' headers to Engine.IO responses."""

        def middleware(environ, start_response):
            if not environ.get("PATH_INFO", "").startswith(path) or environ.get("HTTP_UPGRADE"):
                return wsgi_app(environ, start_response)

            def start_with_headers(status, headers, exc_info=None):
                if status.startswith("200"):
                    request = HookRequest(environ)
                    if self.handshake_hooks and is_handshake(environ):
                        for hook in self.handshake_hooks:
                            hook(headers, request)
                    for hook in self.request_hooks:
                        hook(headers, request)
                return start_response(status, headers, exc_info)

            return wsgi_app(environ, start_with_headers)

        return middleware
