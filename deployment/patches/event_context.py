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

import hashlib
import importlib.metadata
import inspect
from types import MethodType

from flask import Flask, Request
from flask.ctx import RequestContext
from flask.signals import appcontext_tearing_down, request_tearing_down
from flask_socketio import ConnectionRefusedError, SocketIO, _ManagedSession  # python-socketio's, as there

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


def do_teardown_request(app, *args):
    if app.teardown_request_funcs or request_tearing_down.receivers:
        Flask.do_teardown_request(app, *args)


def do_teardown_appcontext(app, *args):
    if app.teardown_appcontext_funcs or appcontext_tearing_down.receivers:
        Flask.do_teardown_appcontext(app, *args)


def request_context(app, environ):
    return CachedRouteRequestContext(app, environ)


def create_url_adapter(app, request):
    # TRUSTED_HOSTS is checked per request by Flask's own method: keep it uncached
    if request is None or app.config["TRUSTED_HOSTS"] is not None:
        return Flask.create_url_adapter(app, request)
    environ = request.environ
    adapter = environ.get(URL_ADAPTER)
    if adapter is None:
        adapter = environ[URL_ADAPTER] = Flask.create_url_adapter(app, request)
    return adapter


FLASK_METHODS = {
    "do_teardown_request": do_teardown_request,
    "do_teardown_appcontext": do_teardown_appcontext,
    "request_context": request_context,
    "create_url_adapter": create_url_adapter,
}


class RealtimeFlask(Flask):
    """Flask with the methods above (see the module's docstring); install() gives them to an app instead."""

    request_class = RealtimeRequest
    do_teardown_request = do_teardown_request
    do_teardown_appcontext = do_teardown_appcontext
    request_context = request_context
    create_url_adapter = create_url_adapter


# Flask-SocketIO's _handle_event as of the pinned Flask-SocketIO 5.7.0 and Flask 3.1 (the session lives on the
# request context): its hash, so that any other version keeps Flask-SocketIO's own method.
FLASK_SOCKETIO_HANDLE_EVENT_SHA256 = "70d95a741fbd40a75299183eccaac594bdef3be18c24a5f40c64f907b2356a8f"


def replicates_flask_socketio():
    try:
        source = inspect.getsource(SocketIO._handle_event)
        flask_version = tuple(int(part) for part in importlib.metadata.version("flask").split(".")[:2])
    except (OSError, TypeError, ValueError, importlib.metadata.PackageNotFoundError):
        return False
    digest = hashlib.sha256(source.encode()).hexdigest()
    return (
        digest == FLASK_SOCKETIO_HANDLE_EVENT_SHA256 and flask_version < (3, 2) and hasattr(RequestContext, "session")
    )


class RealtimeSocketIO(SocketIO):
    """Flask-SocketIO whose per-event context setup reaches the context it pushed directly, not through
    flask.request / flask.session proxies and hasattr() probes of Flask's version on every event: about 5 µs
    of the ~14 µs an echo event spends there. Same steps in the same order (tests/deployment/test_event_context.py);
    with any other Flask-SocketIO or Flask version it is Flask-SocketIO's own method."""

    def _handle_event(self, handler, message, namespace, sid, *args):
        environ = self.server.get_environ(sid, namespace=namespace)
        if not environ:
            return "", 400  # no record of this client: ignore the event
        app = environ["flask.app"]
        with app.request_context(environ) as ctx:
            if self.manage_session:  # the connection's copy of the user session, kept in its environ
                session_obj = environ.get("saved_session")
                if session_obj is None:
                    session_obj = environ["saved_session"] = _ManagedSession(ctx.session)
                ctx._session = session_obj
            else:
                session_obj = ctx.session
            request = ctx.request
            request.sid = sid
            request.namespace = namespace
            request.event = {"message": message, "args": args}
            try:
                if message == "connect":
                    auth = args[1] if len(args) > 1 else None
                    try:
                        ret = handler(auth)
                    except TypeError:
                        ret = handler()
                else:
                    ret = handler(*args)
            except ConnectionRefusedError:
                raise  # python-socketio refuses the connection (the builtin one goes to the error handler)
            except Exception as error:
                err_handler = self.exception_handlers.get(namespace, self.default_exception_handler)
                if err_handler is None:
                    raise
                return err_handler(error)
            if not self.manage_session and (not hasattr(session_obj, "modified") or session_obj.modified):
                app.session_interface.save_session(app, session_obj, app.response_class())
            return ret

    if not replicates_flask_socketio():
        _handle_event = SocketIO._handle_event


VERIFIED = {"flask": ("3.1.3",), "flask-socketio": ("5.7.0",), "werkzeug": ("3.1.9",)}
REPLACES = [*(f"app.{name}" for name in FLASK_METHODS), "app.request_class", "socketio._handle_event"]
ROWS = [
    ("echo_ws", "app_cpu_ms_per_1000"),
    ("echo_polling", "app_cpu_ms_per_1000"),
]  # the benchmark rows it serves (deployment/patches/README.md)
PROVEN_BY = "tests/deployment/test_event_context.py"  # same answers as the library's own code


def install(socketio, app, settings):
    """This app and SocketIO object get the methods of RealtimeFlask and RealtimeSocketIO."""
    for name, function in FLASK_METHODS.items():
        setattr(app, name, MethodType(function, app))
    app.request_class = RealtimeRequest
    if replicates_flask_socketio():  # Flask-SocketIO's source is checked by hash besides the versions
        socketio._handle_event = MethodType(RealtimeSocketIO._handle_event, socketio)
