"""scripts/rolling-restart: restart every app instance of the native stack, one at a time, without dropping
clients. For each instance, in order:

1. SIGTERM to its gunicorn: it drains (deployment/operations/lifecycle.py): /readyz reports draining, HAProxy's
   disable-on-404 stops sending it new clients, its open connections are closed one by one over
   CLOSE_SPREAD_SECONDS and their clients reconnect to the other instances; then it exits.
2. Wait until it has exited (SIGKILL after GRACEFUL_TIMEOUT + 5s, which the drain never needs).
3. Start it again: same name, port and settings (a new `gunicorn.conf.py` or code is picked up here).
4. Wait until it answers /readyz and HAProxy reports it UP, then go on with the next one.

Prints one JSON line per instance (seconds to exit, seconds until UP again) and a summary. Exit status 1
if an instance did not exit in time or did not come back.

    scripts/rolling-restart [--only app2,app3] [--timeout 60]

The stack is the one of STACK_DIR (default .stack/), as for scripts/stack. Restarted instances get this
command's environment, as with `scripts/stack up`: export the same settings (or new ones to roll out).
With docker compose, see docs/operations.md ("Rolling restart").
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from native_stack import Stack, StackError, pid_alive, wait_for  # noqa: E402


def restart_instance(stack, state, app, timeout=60):
    """Drains, stops and restarts one instance; returns its timings."""
    grace = int(stack.env.get("GRACEFUL_TIMEOUT") or 20) + 5
    started = time.monotonic()
    old_pid = app.get("pid")
    if old_pid and pid_alive(old_pid):
        stack.stop_pid(old_pid, timeout=grace)  # SIGTERM to the process group, SIGKILL after `grace`
    if old_pid and pid_alive(old_pid):
        raise StackError(f"{app['name']} (pid {old_pid}) is still running after {grace}s")
    stopped = time.monotonic() - started
    stack.start_app(state, app)
    stack.save(state)
    wait_for(lambda: stack.app_ready(app), timeout, f"{app['name']} to answer /readyz")

    def up():
        try:
            return stack.server_states(state).get(app["name"], "").startswith("UP")
        except OSError:
            return False

    wait_for(up, timeout, f"HAProxy to report {app['name']} UP", interval=0.1)
    return {
        "name": app["name"],
        "old_pid": old_pid,
        "new_pid": app["pid"],
        "stopped_after_s": round(stopped, 2),
        "up_again_after_s": round(time.monotonic() - started, 2),
    }


def rolling_restart(stack, only=None, timeout=60, report=print):
    state = stack.load()
    if state is None:
        raise StackError(f"no stack is running from {stack.dir} (scripts/stack up first)")
    names = [app["name"] for app in state["apps"]]
    unknown = set(only or ()) - set(names)
    if unknown:
        raise StackError(f"no such instance: {', '.join(sorted(unknown))} (instances: {', '.join(names)})")
    results = []
    started = time.monotonic()
    for app in state["apps"]:
        if only and app["name"] not in only:
            continue
        result = restart_instance(stack, state, app, timeout)
        results.append(result)
        report(json.dumps(result))
    summary = {"restarted": [r["name"] for r in results], "total_s": round(time.monotonic() - started, 2)}
    report(json.dumps(summary))
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated instance names (default: all, in order)")
    parser.add_argument("--timeout", type=float, default=60, help="seconds to wait for an instance to come back")
    args = parser.parse_args(argv)
    try:
        rolling_restart(Stack(), only=args.only.split(",") if args.only else None, timeout=args.timeout)
    except StackError as exc:
        print(f"scripts/rolling-restart: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
