"""HAProxy's per-address limits (haproxy/haproxy.cfg, docs/operations.md#per-address-limits), measured on a real
native stack with real clients. The scenarios are tests/deployment/scenarios_limits.py's (tests/deployment/
test_per_address_limits.py runs them with the shipped defaults); this script runs them with every limit lifted
and reports what honest clients from ONE address make, as HAProxy itself counts it (its stick tables, sampled
every 200 ms), which is what the defaults were chosen from:

    .venv/bin/python bench/measure_limits.py            # 200 Node polling clients, paced and unpaced, a kill -9
    .venv/bin/python bench/measure_limits.py --quick    # 50 clients, shorter
    .venv/bin/python bench/measure_limits.py --only flood

Scenarios: paced (200 Node socket.io-client clients on long-polling, one echo every 500 ms each, 60 s), unpaced
(the same, each echo sent as soon as the last ack is back, 30 s), reconnect (200 clients of one instance, which is
killed with kill -9: they come back through HAProxy to the other one) and flood (raw handshakes from 127.0.0.2 as
fast as a thread pool can, while a bystander on 127.0.0.3 echoes; run with the shipped defaults). Nothing here
asserts: the printed JSON is the measurement.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "scripts"), str(ROOT / "tests" / "deployment")]

from native_stack import Stack, free_port  # noqa: E402
from scenarios_faults import stack_env  # noqa: E402
from scenarios_limits import (  # noqa: E402
    node_available,
    scenario_flood,
    scenario_polling_clients,
    scenario_reconnect_after_kill,
)

# every per-address limit so high that nothing is refused: what is measured is what clients make
LIFTED = {
    "HAPROXY_PER_IP_SESSION_RATE": "100000000",
    "HAPROXY_PER_IP_CONN_CUR": "100000000",
    "HAPROXY_PER_IP_CONN_RATE": "100000000",
}


# --- the run -----------------------------------------------------------------------------------------------------
def make_stack(replicas, **env):
    stack = Stack(
        state_dir=tempfile.mkdtemp(prefix="limits-"), port=free_port(), replicas=replicas, env=stack_env(**env)
    )
    stack.up()
    return stack


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="50 clients, shorter runs")
    parser.add_argument("--only", default="paced,unpaced,reconnect,flood", help="comma-separated scenarios")
    args = parser.parse_args(argv)
    if not node_available():
        raise SystemExit("needs node and `npm ci` (the clients are Node's socket.io-client)")
    clients = 50 if args.quick else 200
    wanted = set(args.only.split(","))
    results = {"clients": clients}
    plan = [
        ("paced", 2, LIFTED, lambda s: scenario_polling_clients(s, clients, 20 if args.quick else 60, 500)),
        ("unpaced", 2, LIFTED, lambda s: scenario_polling_clients(s, clients, 10 if args.quick else 30, 0)),
        ("reconnect", 2, LIFTED, lambda s: scenario_reconnect_after_kill(s, clients)),
        ("flood", 1, {}, scenario_flood),  # the shipped defaults
    ]
    for name, replicas, env, scenario in plan:
        if name not in wanted:
            continue
        stack = make_stack(replicas, **env)
        try:
            results[name] = scenario(stack)
        finally:
            stack.down()
        print(json.dumps({name: results[name]}), file=sys.stderr, flush=True)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
