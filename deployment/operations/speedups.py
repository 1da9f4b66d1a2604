"""The speedups: faster or leaner ways for the libraries to do what they do, each measured by the benchmark
(deployment/patches/README.md). SPEEDUPS=off installs none of them, so the libraries run as released;
SPEEDUPS_SKIP=name,... leaves single ones off.

Each speedup is a module with `install(socketio, app, settings)`, which returns True only if it now runs (else
it logged one line saying why, deployment/patches/pins.py's stays_off), and may declare `VERIFIED` (library
versions, and Python where it relies on CPython details: with others installed it stays off, one log line),
`REQUIRES` (speedups it only works on top of: without one of them it stays off, one log line) and `ASYNC_MODES`
(the servers it serves, e.g. gevent's pywsgi: under another async_mode, such as `flask run`'s threading, it
stays off, one log line). The start log names exactly the speedups that run.
"""

import importlib
import logging

from deployment.patches import pins
from deployment.settings import SPEEDUP_NAMES

log = logging.getLogger("patches")

# name -> module: in deployment/patches/ where the speedup replaces a library's internals
MODULES = {name: f"deployment.patches.{name}" for name in SPEEDUP_NAMES}
MODULES["event_context"] = "deployment.operations.realtime_flask"  # a Flask subclass; its one patch in patches/
MODULES["session_cache"] = "deployment.operations.session_cache"  # through app.session_interface


def module_of(name):
    return importlib.import_module(MODULES[name])


def install_speedups(socketio, app, settings):
    """After socketio.init_app(app) and the operations layer: the speedups this configuration asks for, in
    SPEEDUP_NAMES' order. Returns the names of those that are on."""
    if not settings.speedups:
        log.info("SPEEDUPS=off: the stock libraries run, no speedup installed")
        return []
    installed = []
    for name in SPEEDUP_NAMES:
        if name in settings.speedups_skip:
            continue
        module = module_of(name)
        missing = [needed for needed in getattr(module, "REQUIRES", ()) if needed not in installed]
        if missing:
            log.warning(
                "speedup %s stays off: it needs %s, which %s off",
                name,
                ", ".join(missing),
                "is" if len(missing) == 1 else "are",
            )
            continue
        if hasattr(module, "VERIFIED") and not pins.verified(name, module.VERIFIED):
            continue
        modes = getattr(module, "ASYNC_MODES", None)
        if modes and socketio.server.async_mode not in modes:
            log.warning(
                "speedup %s stays off: async_mode is %s, it serves %s only",
                name,
                socketio.server.async_mode,
                "/".join(modes),
            )
            continue
        if module.install(socketio, app, settings):  # False or None: it does not run (and said why)
            installed.append(name)
    log.info("speedups on: %s", ", ".join(installed) or "none")
    return installed
