"""RealtimeFlask: Flask, with the per-event work of Socket.IO handlers cached, through the doors Flask opens to
subclasses (https://flask.palletsprojects.com/en/stable/patterns/subclassing/). Use it in place of `Flask`:

    from deployment.extension import RealtimeFlask

    app = RealtimeFlask(__name__)

Flask-SocketIO runs every Socket.IO event inside `app.request_context(environ)`, built from the environ of the
connection's handshake, which never changes. Flask binds a URL adapter to that environ and matches the URL
against every route on each push: about 15% of a worker's CPU on a WebSocket echo (py-spy, bench/run
--profile). RealtimeFlask does both once per environ and keeps the result in it (`create_url_adapter`, and
`request_context` giving a RequestContext whose `match_request`, the hook Flask leaves to subclasses, reuses
the kept match); handlers see the same request, url_for() and request.url_rule as before. HTTP requests have an
environ each, so nothing changes for them.

Popping a context costs each event three more things that usually do nothing: the teardown of the request and
of the app context (the functions registered for them, then a blinker signal each) and the request's close()
(which closes uploaded files). RealtimeFlask skips each when it has nothing to do: no teardown function
registered and no receiver of the signal (`do_teardown_request`, `do_teardown_appcontext`); no files parsed
(`request_class`).

All of it is on only while the `event_context` speedup is on for the app (`install()` below, called by
deployment/operations/speedups.py): with SPEEDUPS=off or SPEEDUPS_SKIP=event_context every method is Flask's
own. The speedup's other part, Flask-SocketIO's `_handle_event`, has no such door: it is a pinned copy in
deployment/patches/event_context.py. Same answers as plain Flask: tests/deployment/test_event_context.py.
"""

import functools
import logging
from io import BytesIO

from flask import Flask, Request

try:
    from flask.ctx import RequestContext
except ImportError:  # a Flask without it is not a verified one: the speedup stays off, RealtimeFlask is Flask
    RequestContext = object
from flask.signals import appcontext_tearing_down, request_tearing_down
from werkzeug.test import EnvironBuilder

from deployment.patches import event_context, pins

log = logging.getLogger("patches")  # the speedups' lines (deployment/operations/speedups.py)

DOOR = "RealtimeFlask(Flask): create_url_adapter, request_context, do_teardown_*, request_class"
SETS = ["app.request_class"]  # what the door sets where tools can read it (RealtimeRequest while it is on)
# Flask documents these methods, not how a later version calls them: on another Flask it stays off (one line)
VERIFIED = {"flask": ("3.1.3",)}
ROWS = event_context.ROWS  # the benchmark rows the speedup serves, both parts (deployment/patches/README.md)
PROVEN_BY = "tests/deployment/test_event_context.py"  # same answers as plain Flask and Flask-SocketIO's own code
URL_ADAPTER = "realtime.url_adapter"  # environ keys: (app, its URL adapter for this environ)
ROUTE = "realtime.route"  # (URL adapter, url_rule, view_args, routing_exception)


class CachedRouteRequestContext(RequestContext):
    def match_request(self):
        environ = self.request.environ
        route = environ.get(ROUTE)
        if route is None or route[0] is not self.url_adapter:
            super().match_request()
            request = self.request
            error = request.routing_exception
            if error is not None:  # kept for the connection's lifetime: without the frames of its tracebacks
                error.__traceback__ = error.__context__ = None
            environ[ROUTE] = (self.url_adapter, request.url_rule, request.view_args, error)
            return
        _, rule, view_args, error = route
        self.request.url_rule = rule
        self.request.view_args = None if view_args is None else dict(view_args)
        self.request.routing_exception = error


class RealtimeRequest(Request):
    def close(self):
        if "files" in self.__dict__:  # werkzeug's close() closes only the files a parse left there
            super().close()


@functools.cache
def parsed_files_stay_in_dict():
    """Whether werkzeug keeps a request's parsed files in its __dict__ (where its close() and RealtimeRequest's
    look): checked once per process, so that another werkzeug never has uploads left open."""
    request = Request(EnvironBuilder(method="POST", data={"f": (BytesIO(b"x"), "f")}).get_environ())
    try:
        return bool(request.files) and "files" in request.__dict__
    finally:
        request.close()


class RealtimeFlask(Flask):
    """Flask whose Socket.IO events bind and match the URL once per connection and skip empty teardowns, while
    the event_context speedup is on for it (the module's docstring); otherwise Flask as it is."""

    #: Set by the event_context speedup (install() below); False: each method below is Flask's own.
    event_context_speedup = False

    def create_url_adapter(self, request):
        # TRUSTED_HOSTS is checked per request by Flask's own method: keep it uncached
        if not self.event_context_speedup or request is None or self.config["TRUSTED_HOSTS"] is not None:
            return super().create_url_adapter(request)
        environ = request.environ
        kept = environ.get(URL_ADAPTER)
        if kept is None or kept[0] is not self:
            kept = environ[URL_ADAPTER] = (self, super().create_url_adapter(request))
        return kept[1]

    def request_context(self, environ):
        if not self.event_context_speedup:
            return super().request_context(environ)
        return CachedRouteRequestContext(self, environ)

    def do_teardown_request(self, *args, **kwargs):
        # blinker documents `if signal.receivers:` as the check for connected receivers
        if not self.event_context_speedup or self.teardown_request_funcs or request_tearing_down.receivers:
            super().do_teardown_request(*args, **kwargs)

    def do_teardown_appcontext(self, *args, **kwargs):
        if not self.event_context_speedup or self.teardown_appcontext_funcs or appcontext_tearing_down.receivers:
            super().do_teardown_appcontext(*args, **kwargs)


def turn_on(app):
    """The Flask part of the speedup, for this RealtimeFlask: its methods above, and RealtimeRequest unless the
    app has a request class of its own."""
    app.event_context_speedup = True
    if app.request_class is Request and parsed_files_stay_in_dict():
        app.request_class = RealtimeRequest


def install(socketio, app, settings):
    """The event_context speedup: RealtimeFlask's caching for this app, and Flask-SocketIO's `_handle_event`
    replaced (deployment/patches/event_context.py) while its pins match. True if either runs."""
    flask_part = isinstance(app, RealtimeFlask)
    if flask_part:
        turn_on(app)
    else:
        log.info(
            "speedup event_context: the app is a %s, not a RealtimeFlask (from deployment.extension import "
            "RealtimeFlask): its Flask part stays off, each event binds and matches the URL again",
            type(app).__name__,
        )
    socketio_part = pins.verified("event_context", event_context.VERIFIED) and event_context.install(
        socketio, app, settings
    )
    return flask_part or socketio_part
