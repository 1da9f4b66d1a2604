"""Every replacement of a library's internals, in one package (README.md beside this file lists them, with figures).

The speedups among them serve speed and memory only: deployment/operations/speedups.py installs them (with the
speedups that use a public extension point instead), and `SPEEDUPS=off` leaves every one of them off, so the
stock libraries run. The other modules here (OPERATIONS_PATCHES) serve the operations layer, which installs them
itself.
Each module names the library versions it was verified against (VERIFIED) and what it replaces (REPLACES);
with another version installed it stays off and logs one line (deployment/patches/pins.py).
"""

import logging

from deployment.patches import pins  # the standard library only: safe to import in gunicorn's master

log = logging.getLogger("patches")

# The replacements the operations layer installs itself (not switched by SPEEDUPS).
OPERATIONS_PATCHES = ("engineio_packets", "socketio_hooks", "gunicorn_servers", "connection_recovery")


def apply(module, *args):
    """module.install(*args) if the installed libraries are versions the module was verified against."""
    name = module.__name__.rsplit(".", 1)[-1]
    if not pins.verified(name, module.VERIFIED):
        return False
    module.install(*args)
    return True
