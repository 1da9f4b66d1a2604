"""gunicorn's entry point: patch the standard library for gevent before anything else imports it."""

import os

import gevent
from gevent import monkey

monkey.patch_all()

# gevent records each greenlet's spawning stack for debugging: a greenlet per Socket.IO event makes that about
# 5% of a worker's CPU. Off unless gevent's own GEVENT_TRACK_GREENLET_TREE asks for it.
if "GEVENT_TRACK_GREENLET_TREE" not in os.environ:
    gevent.config.track_greenlet_tree = False

from app import create_app  # noqa: E402

app = create_app()
