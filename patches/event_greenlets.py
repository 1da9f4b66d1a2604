"""Reused greenlets for Socket.IO events that python-socketio would give a new greenlet each (ASYNC_HANDLERS):
every long-polling event, and a WebSocket's events once one of its handlers has waited (inline_handlers.py).

Under Python 3.11 a new greenlet gets its own 16 KiB frame stack from an mmap() on its first call, and gives it
back with munmap() when it ends (strace on a long-polling worker: one pair per event); with gevent's Greenlet
object around it, a spawn costs about 14 µs more than handing a task to an idle greenlet. Here a greenlet that
has run an event waits for the next one, up to IDLE_EVENT_GREENLETS of them; beyond that they end as before.
Each event runs in a fresh contextvars context, as in a new greenlet, so nothing it sets is seen by the next.
"""

import contextvars
import logging

import gevent
from gevent import getcurrent
from greenlet import greenlet

log = logging.getLogger(__name__)


class EventGreenlets:
    def __init__(self, keep_idle):
        self.keep_idle = keep_idle
        self.idle = []  # greenlets waiting in the hub for their next event
        self.made = 0  # greenlets created (tests check reuse with it)

    def spawn(self, function, *args):
        """Run function(*args) in a greenlet of its own, soon (as gevent.spawn_raw), reusing an idle one."""
        gevent.get_hub().loop.run_callback(self.start, function, args)

    def start(self, function, args):  # in the loop: an idle greenlet is taken only now, when it can run at once
        if self.idle:
            runner = self.idle.pop()
        else:
            runner = greenlet(self.run, parent=gevent.get_hub())
            self.made += 1
        runner.switch(function, args)

    def run(self, function, args):
        while True:
            try:
                contextvars.Context().run(function, *args)
            except Exception:  # as for python-socketio's greenlet per event: only this event fails
                log.exception("error in a Socket.IO event handler")
            function = args = None  # nothing of the last event is kept while idle
            if len(self.idle) >= self.keep_idle:
                return
            me = getcurrent()
            self.idle.append(me)
            try:
                function, args = gevent.get_hub().switch()
            except BaseException:  # woken by anything but spawn() (e.g. a timer the last event left): end
                if me in self.idle:
                    self.idle.remove(me)
                return
