"""Reused greenlets for Socket.IO events. python-socketio runs every event in a new greenlet (ASYNC_HANDLERS,
through its server's start_background_task). Under Python 3.11 a new greenlet maps a frame stack of its own on
its first call and unmaps it when it ends: `strace -c` on a worker during echo_ws counts one mmap() and one
munmap() per message, and py-spy puts most of the extra CPU per WebSocket echo against the code that reused
greenlets (385ae30) in samples with no Python frame, greenlets being set up and torn down
(bench/results/before-after-profile/profile-diff.md).

Here an event goes to a greenlet that has run an earlier one and waits for the next, up to KEEP_IDLE of them;
beyond that they end as before. What the handler sees is what a new greenlet gives it:
- it runs from the event loop's callbacks, in the order python-socketio's greenlet would have started;
- in a fresh contextvars context (Flask's contexts, flask.g), as a new greenlet starts with an empty one;
- gevent's greenlet-local storage (`threading.local` under gevent's monkey patching) is dropped when the event
  ends, as gevent does when a Greenlet ends (the runner offers gevent.local the same `rawlink` a Greenlet does);
- an exception that escapes the handler goes to the hub's handle_error, as a failed Greenlet's does, and only
  that event fails.
What differs: `gevent.getcurrent()` is the same object for the events one runner runs, and is a plain greenlet,
not a gevent.Greenlet. Other start_background_task() calls (the app's own tasks, engineio's) are the library's.
Relies on python-socketio starting events with start_background_task(self._handle_event_internal, ...), on
gevent.local's rawlink protocol, and on CPython 3.11's per-greenlet frame stacks for its gain (VERIFIED).
"""

import contextvars
import sys

import gevent
from greenlet import greenlet

from deployment.patches import pins

KEEP_IDLE = 100  # idle runners kept: above the events a worker has in flight at once at its usual load


class EventRunner(greenlet):
    """A greenlet that runs one event after another. `rawlink`/`unlink` as gevent.Greenlet's, for gevent.local:
    its links run when an event ends, as a Greenlet's run when it ends."""

    def __init__(self, pool):
        super().__init__(self.serve, parent=gevent.get_hub())
        self.pool = pool
        self.links = []

    def rawlink(self, callback):
        self.links.append(callback)

    def unlink(self, callback):
        if callback in self.links:
            self.links.remove(callback)

    def end_event(self):
        links, self.links = self.links, []
        for callback in links:
            callback(self)

    def serve(self, function, args):
        pool = self.pool
        while True:
            try:
                contextvars.Context().run(function, *args)
            except Exception:  # only this event fails, reported as gevent reports a failed Greenlet
                gevent.get_hub().handle_error(self, *sys.exc_info())
            except BaseException:  # GreenletExit, SystemExit...: as for a Greenlet, and this runner ends
                self.end_event()
                gevent.get_hub().handle_error(self, *sys.exc_info())
                return
            function = args = None  # nothing of the last event is kept while idle
            self.end_event()
            if len(pool.idle) >= pool.keep_idle:
                return
            pool.idle.append(self)
            try:
                function, args = gevent.get_hub().switch()
            except BaseException:  # woken by anything but start() (a timer the last event left): end here
                if self in pool.idle:
                    pool.idle.remove(self)
                return


class EventGreenlets:
    def __init__(self, keep_idle=KEEP_IDLE):
        self.keep_idle = keep_idle
        self.idle = []  # runners waiting in the hub for their next event
        self.made = 0  # runners created (the tests check reuse with it)

    def spawn(self, function, *args):
        """Run function(*args) in a greenlet, from the loop's callbacks, as gevent.Greenlet.start() does."""
        gevent.get_hub().loop.run_callback(self.start, function, args)

    def start(self, function, args):  # in the loop: an idle runner is taken only now, when it runs at once
        if self.idle:
            runner = self.idle.pop()
        else:
            runner = EventRunner(self)
            self.made += 1
        runner.switch(function, args)


def event_dispatch(server, pool):
    """server.start_background_task, with python-socketio's event handling sent to the pool."""
    library = server.start_background_task
    handle_event = server._handle_event_internal  # bound once: this runs for every event

    def start_background_task(target, *args, **kwargs):
        if target == handle_event and not kwargs:
            pool.spawn(target, *args)
            return None  # python-socketio does not keep the task of an event
        return library(target, *args, **kwargs)

    start_background_task.library = library
    return start_background_task


def uninstall(server):
    if hasattr(server.start_background_task, "library"):
        server.start_background_task = server.start_background_task.library


def install(socketio, app, settings):
    server = socketio.server
    uninstall(server)
    if not server.async_handlers:  # ASYNC_HANDLERS=false: events run in their reader, no greenlet to reuse
        return pins.stays_off("event_greenlets", "ASYNC_HANDLERS=false runs events without a greenlet each")
    server.event_greenlets = EventGreenlets()
    server.start_background_task = event_dispatch(server, server.event_greenlets)
    return True


VERIFIED = {"python-socketio": ("5.18.1",), "gevent": ("26.9.0",), "greenlet": ("3.5.6",), "python": ("3.11",)}
REPLACES = ["server.start_background_task"]  # for python-socketio's events only: other tasks get the library's
ROWS = [("echo_ws", "app_cpu_ms_per_1000"), ("echo_polling", "app_cpu_ms_per_1000")]  # deployment/patches/README.md
ASYNC_MODES = ("gevent",)
PROVEN_BY = "tests/deployment/test_event_greenlets.py"  # the same handler runs as with python-socketio's greenlets
