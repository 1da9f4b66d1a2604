"""Flask-SocketIO runs every Socket.IO event inside `app.request_context(environ)`, built from the environ of
the connection's handshake, which never changes. Flask binds a URL adapter to that environ and matches the
URL against every route on each push: about 15% of a worker's CPU on a WebSocket echo (py-spy, bench/run
--profile). RealtimeFlask does both once per environ and keeps the result in it; handlers see the same
request, url_for() and request.url_rule as before. HTTP requests have an environ each, so nothing changes
for them.

Popping a context costs each event three more things that usually do nothing: the teardown of the request
and of the app context (the functions registered for them, then a blinker signal each) and the request's
close() (which closes uploaded files). RealtimeFlask skips each when it has nothing to do: no teardown
function registered and no receiver of the signal; no files parsed.
"""

from flask import Flask, Request
from flask.ctx import RequestContext
from flask.signals import appcontext_tearing_down, request_tearing_down

URL_ADAPTER = "realtime.url_adapter"
ROUTE = "realtime.route"


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
        if "files" in self.__dict__:  # werkzeug's close() only closes the files a parse left there
            super().close()


class RealtimeFlask(Flask):
    """Flask whose request contexts bind and match the URL once per environ (see the module's docstring)."""

    request_class = RealtimeRequest

    def do_teardown_request(self, *args):
        if self.teardown_request_funcs or request_tearing_down.receivers:
            super().do_teardown_request(*args)

    def do_teardown_appcontext(self, *args):
        if self.teardown_appcontext_funcs or appcontext_tearing_down.receivers:
            super().do_teardown_appcontext(*args)

    def request_context(self, environ):
        return CachedRouteRequestContext(self, environ)

    def create_url_adapter(self, request):
        # TRUSTED_HOSTS is checked per request by Flask's own method: keep it uncached
        if request is None or self.config["TRUSTED_HOSTS"] is not None:
            return super().create_url_adapter(request)
        environ = request.environ
        adapter = environ.get(URL_ADAPTER)
        if adapter is None:
            adapter = environ[URL_ADAPTER] = super().create_url_adapter(request)
        return adapter
