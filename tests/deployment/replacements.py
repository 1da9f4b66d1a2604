"""Where a speedup's targets (its REPLACES, a public door's SETS) point in a live app: the module each is bound
to. Imported by the probes of test_patches.py and test_speedup_dependencies.py, which run in a fresh
interpreter with this folder on sys.path."""

import importlib
import types


def live_roots(app, socketio):
    """The names a target may start with, for what is not importable (e.g. `eio.handle_request`)."""
    server = socketio.server
    return {"app": app, "socketio": socketio, "server": server, "eio": server.eio, "manager": server.manager}


def walk(value, parts):
    for part in parts:
        name, _, key = part.partition("[")
        value = getattr(value, name)
        if key:
            value = value[key.rstrip("]")]
    return value


def resolve(target, roots):
    """An importable dotted path first; else a path from one of the app's live objects (`roots`)."""
    parts = target.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            return walk(importlib.import_module(".".join(parts[:cut])), parts[cut:])
        except (ImportError, AttributeError):
            continue
    return walk(roots[parts[0]], parts[1:])


def origin(value):
    """The module that defines what `value` is (a function's, a class's, an instance's class's)."""
    if isinstance(value, types.ModuleType):
        return value.__name__
    if isinstance(value, (types.FunctionType, types.MethodType, type)):
        return getattr(value, "__func__", value).__module__
    return type(value).__module__


def origins(targets, roots):
    return {target: origin(resolve(target, roots)) for target in targets}
