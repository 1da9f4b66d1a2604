"""The one hook deployment/operations/instrument.py's metrics need that has no public door.

Everything else instrument.py counts and logs goes through public doors of the libraries: every handler is
wrapped as it is registered (python-socketio's `Server.on()` and `register_namespace()`, which Flask-SocketIO's
`on()`, `on_event()` and `on_namespace()` call), emits through the public `Server.emit()`, Engine.IO's 400 answers
through the public `handle_request()`, and the deployment's message queue (deployment/operations/queue_manager.py's
QueueManager) through its own `_publish` and `_subscribe`.

Left here: a publish dropped by a pub/sub manager of python-socketio's own (RedisManager, KafkaManager, ...: not
what the deployment makes, but a server of your own may have one). `emit()` returns nothing either way, and such
a manager tells it only through what its `_publish` returns (None when it gave up), an internal of that version:

    manager._publish(data)   -> publish(original, data)

With a python-socketio version other than VERIFIED nothing is wrapped (one log line, deployment/patches/pins.py),
and instrument.py refuses to instrument a server with such a manager (one line naming the versions and the way
out) rather than count nothing.
"""

from deployment.patches import pins

VERIFIED = {"python-socketio": ("5.18.1",)}
REPLACES = ["manager._publish"]
SERVES = "metrics: lost publishes of python-socketio's own pub/sub managers (deployment/operations/instrument.py)"
PROVEN_BY = "tests/deployment/test_metrics.py, tests/deployment/test_patches_operations.py"


def install(server, publish=None, subscribe=None):
    """Wraps the given hooks on a python-socketio Server's client manager if the installed python-socketio is a
    verified version; True if it is. Call it once per server. (`subscribe`: for a manager that has `_subscribe`,
    none of python-socketio's own does.)"""
    if not pins.verified("socketio_hooks", VERIFIED):
        return False
    if publish is not None and hasattr(server.manager, "_publish"):
        around_publish(server.manager, publish)
    if subscribe is not None and hasattr(server.manager, "_subscribe"):
        on_subscribe(server.manager, subscribe)
    return True


# The functions below replace internals unconditionally: call them through install(), which checks the pins.


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
