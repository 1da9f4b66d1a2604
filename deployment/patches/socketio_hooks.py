"""Hooks into python-socketio/python-engineio internals for deployment/operations/instrument.py's metrics and log lines.

python-socketio has no middleware for events, so `install()` wraps non-public methods of one process's server
objects, the way python-socketio's own admin instrumentation (`Server.instrument()`) does. Each wrapper here is
generic; what is counted or logged is passed in by the caller:

    server._trigger_event(event, namespace, *args)  -> trigger_event(original, event, namespace, *args)
    eio._bad_request(message=None)                   -> bad_request(message), then the original
    manager._publish(data)                           -> publish(original, data)
    manager._subscribe()                             -> subscribe(), then the original

The manager hooks apply only to a manager that has these methods (a message-queue manager); the in-process
manager has none.

With a python-socketio or python-engineio version other than VERIFIED nothing is wrapped (one log line,
deployment/patches/pins.py): the libraries' own methods run, and what these hooks feed (events received, handler
latency and errors, connect/disconnect log lines, Engine.IO 400s, lost publishes and subscriptions) is not
counted; /metrics still answers, with those series at 0.
"""

from deployment.patches import pins

VERIFIED = {"python-socketio": ("5.18.1",), "python-engineio": ("4.15.1",)}
REPLACES = ["server._trigger_event", "eio._bad_request", "manager._publish", "manager._subscribe"]
SERVES = "metrics and connection log lines (deployment/operations/instrument.py)"
PROVEN_BY = "tests/deployment/test_metrics.py, tests/deployment/test_logs.py"


def install(server, trigger_event=None, bad_request=None, publish=None, subscribe=None):
    """Wraps the given hooks on a python-socketio Server (and its Engine.IO server and client manager) if the
    installed libraries are verified versions; True if they are. Call it once per server."""
    if not pins.verified("socketio_hooks", VERIFIED):
        return False
    if trigger_event is not None:
        around_trigger_event(server, trigger_event)
    if bad_request is not None:
        on_bad_request(server.eio, bad_request)
    if publish is not None and hasattr(server.manager, "_publish"):
        around_publish(server.manager, publish)
    if subscribe is not None and hasattr(server.manager, "_subscribe"):
        on_subscribe(server.manager, subscribe)
    return True


# The functions below replace internals unconditionally: call them through install(), which checks the pins.


def around_trigger_event(server, wrapper):
    """Every handler call (connect, disconnect, events) goes through wrapper(original, event, namespace, *args)."""
    original = server._trigger_event

    def trigger_event(event, namespace, *args):
        return wrapper(original, event, namespace, *args)

    server._trigger_event = trigger_event


def on_bad_request(eio, callback):
    """callback(message) before each Engine.IO 400 response is made (message may be None)."""
    original = eio._bad_request

    def bad_request(message=None):
        callback(message)
        return original(message)

    eio._bad_request = bad_request


def around_publish(manager, wrapper):
    """Every message-queue publish goes through wrapper(original, data)."""
    original = manager._publish

    def publish(data):
        return wrapper(original, data)

    manager._publish = publish


def on_subscribe(manager, callback):
    """callback() before each (re)subscription of the manager's listener."""
    original = manager._subscribe

    def subscribe():
        callback()
        return original()

    manager._subscribe = subscribe
