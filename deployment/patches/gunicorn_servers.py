"""The gevent servers of gunicorn's plain gevent worker, for deployment/operations/lifecycle.py's graceful stop.

gunicorn's `-k gevent` worker (no `server_class`, as with simple-websocket instead of gevent-websocket) makes
its servers in `run()` with the module attribute `gunicorn.workers.ggevent.StreamServer`, and keeps them in a
local variable. The graceful stop needs them (to see when only idle keep-alive connections are left, and close
those): `install(on_server)` replaces that module attribute with a subclass of the same StreamServer that
passes each server it makes to `on_server(server)`. (With gevent-websocket's worker, lifecycle.py sets the
worker's `server_class` instead, gunicorn's own extension point; nothing here is needed.)

With a gunicorn version other than VERIFIED it stays off (one log line, deployment/patches/pins.py) and gunicorn's own
StreamServer runs: the graceful stop still drains and spreads the closes, but cannot see the servers, so idle
keep-alive connections from HAProxy are not closed early and gunicorn waits for them until its
graceful_timeout. No "python" pin: a subclass of gunicorn's (gevent's) StreamServer relies on nothing of CPython's.
"""

from deployment.patches import pins

VERIFIED = {"gunicorn": ("27.0.1",)}
REPLACES = ["gunicorn.workers.ggevent.StreamServer"]
SERVES = "graceful stop under gunicorn's plain gevent worker (deployment/operations/lifecycle.py)"
PROVEN_BY = "tests/deployment/test_gunicorn_conf.py, tests/deployment/test_patches_operations.py"

listeners = []  # on_server callbacks, in install order


def install(on_server):
    """Each StreamServer gunicorn's gevent worker makes from now on is passed to on_server(server), if gunicorn
    is a verified version; True if it is. A second call adds its callback; the class is replaced once."""
    if not pins.verified("gunicorn_servers", VERIFIED):
        return False
    from gunicorn.workers import ggevent

    if not getattr(ggevent.StreamServer, "recorded_by_patches", False):

        class RecordedStreamServer(ggevent.StreamServer):
            recorded_by_patches = True

            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                for listener in listeners:
                    listener(self)

        ggevent.StreamServer = RecordedStreamServer
    listeners.append(on_server)
    return True
