"""Every replacement of a library's internals, in one package (README.md beside this file lists them, with figures).

The speedups (SPEEDUP_NAMES) serve speed and memory only: `install_speedups()` is called once by the app
factory, and `SPEEDUPS=off` leaves every one of them off, so the stock libraries run. The other modules here
(OPERATIONS_PATCHES) serve the operations layer, which installs them itself.
Each module names the library versions it was verified against (VERIFIED) and what it replaces (REPLACES);
with another version installed it stays off and logs one line (deployment/patches/pins.py).
"""

import importlib
import logging

from deployment.patches import pins  # the standard library only: safe to import in gunicorn's master

log = logging.getLogger("patches")

# In install order. Importing this package imports none of them (gunicorn's master reads the names).
SPEEDUP_NAMES = (
    "event_context",
    "session_cache",
    "json_codec",
    "pywsgi_speedups",
    "websocket_speedups",
    "connection_memory",
    "websocket_writes",
    "idle_websockets",
)
# The replacements the operations layer installs itself (not switched by SPEEDUPS).
OPERATIONS_PATCHES = ("engineio_packets", "socketio_hooks", "gunicorn_servers", "queue_manager", "connection_recovery")


def apply(module, *args):
    """module.install(*args) if the installed libraries are versions the module was verified against."""
    name = module.__name__.rsplit(".", 1)[-1]
    if not pins.verified(name, module.VERIFIED):
        return False
    module.install(*args)
    return True


def install_speedups(socketio, app, settings):
    """After socketio.init_app(app) and the operations layer: the speedups this configuration asks for."""
    if not settings.speedups:
        log.info("SPEEDUPS=off: the stock libraries run, no speedup installed")
        return []
    installed = []
    for name in SPEEDUP_NAMES:
        if name in settings.speedups_skip:
            continue
        module = importlib.import_module(f"deployment.patches.{name}")
        if apply(module, socketio, app, settings):
            installed.append(name)
    log.info("speedups on: %s", ", ".join(installed) or "none")
    return installed
