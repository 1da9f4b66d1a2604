"""Flask-SocketIO runs every Socket.IO event through `SocketIO._handle_event`, which reaches the context it has
just pushed through the flask.request / flask.session proxies and probes Flask's version with hasattr() on every
event. Flask-SocketIO offers no door for this method: here is a copy that reaches the context directly, pinned to
the versions it was copied from (and to the method's source, by hash).

The rest of the event_context speedup, Flask's part, goes through doors Flask opens to subclasses:
RealtimeFlask (deployment/operations/realtime_flask.py), whose install() installs this module too.
"""

import hashlib
import importlib.metadata
import inspect
from types import MethodType

from flask.ctx import RequestContext
from flask_socketio import ConnectionRefusedError, SocketIO, _ManagedSession  # python-socketio's, as there

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


VERIFIED = {"flask": ("3.1.3",), "flask-socketio": ("5.7.0",)}
REPLACES = ["socketio._handle_event"]
ROWS = [
    ("echo_ws", "app_cpu_ms_per_1000"),
    ("echo_polling", "app_cpu_ms_per_1000"),
]  # the benchmark rows it serves (deployment/patches/README.md)
PROVEN_BY = "tests/deployment/test_event_context.py"  # same answers as the library's own code


def install(socketio, app, settings):
    """This SocketIO object gets the method of RealtimeSocketIO if Flask-SocketIO's own is the one it copies.
    Returns whether it did."""
    if not replicates_flask_socketio():  # Flask-SocketIO's source is checked by hash besides the versions
        return False
    socketio._handle_event = MethodType(RealtimeSocketIO._handle_event, socketio)
    return True
