"""Fault scenarios against a real native stack (HAProxy, Redis, gunicorn instances, python-socketio clients),
measured. The scenarios are tests/deployment/scenarios_faults.py's: tests/deployment/test_faults.py runs them
small and asserts on the results; this script runs them at a larger size and writes the figures:

    .venv/bin/python bench/measure_faults.py            # docs/faults.json + the table in docs/operations.md
    .venv/bin/python bench/measure_faults.py --quick    # smaller, for a try
    .venv/bin/python bench/measure_faults.py --only kill9,reload --no-write

Every number in docs/operations.md's fault table comes from here: edit the scenarios, not the table.
Scenarios: kill9, rolling_restart, redis_outage, redis_at_start, reload, bad_input.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "scripts"), str(ROOT / "tests" / "deployment")]

from native_stack import Stack, free_port  # noqa: E402
from scenarios_faults import (  # noqa: E402
    reload_config_copy,
    scenario_bad_input,
    scenario_kill9,
    scenario_redis_at_start,
    scenario_redis_outage,
    scenario_reload,
    scenario_rolling_restart,
    stack_env,
)

DOCS = ROOT / "docs"
FAULTS_JSON = DOCS / "faults.json"
OPERATIONS_MD = DOCS / "operations.md"
TABLE_BEGIN = "<!-- fault table: written by bench/measure_faults.py, do not edit -->"
TABLE_END = "<!-- end of fault table -->"


# --- the run and the table ----------------------------------------------------------------------------
class Stacks:
    def __init__(self, python):
        self.python = python
        self.started = []

    def make(self, replicas=3, **env):
        stack = Stack(
            state_dir=tempfile.mkdtemp(prefix="faults-"),
            port=free_port(),
            replicas=replicas,
            env=stack_env(**env),
            python=self.python,
        )
        stack.up()
        self.started.append(stack)
        return stack

    def down(self):
        for stack in self.started:
            stack.down()
        self.started = []


def run(args):
    stacks = Stacks(args.python)
    quick = args.quick
    results = {}
    wanted = set(args.only.split(",")) if args.only else None

    def want(name):
        return wanted is None or name in wanted

    try:
        if want("kill9"):
            results["kill9"] = scenario_kill9(stacks.make(), clients=24 if quick else 60)
            stacks.down()
        if want("rolling_restart"):
            results["rolling_restart"] = scenario_rolling_restart(stacks.make(), clients=24 if quick else 60)
            stacks.down()
        if want("redis_outage"):
            results["redis_outage"] = scenario_redis_outage(stacks.make(), outage_s=5 if quick else 15)
            stacks.down()
        if want("redis_at_start"):
            results["redis_at_start"] = scenario_redis_at_start(args.python, start_redis_after=3 if quick else 8)
        if want("reload"):
            stack, change, restore = reload_config_copy(lambda: stacks.make())
            try:
                results["reload"] = scenario_reload(
                    stack, change, clients=12 if quick else 40, observe_s=10 if quick else 40
                )
            finally:
                restore()
            stacks.down()
        if want("bad_input"):
            stack = stacks.make(replicas=1, MAX_HTTP_BUFFER_SIZE=65536)
            results["bad_input"] = scenario_bad_input(stack, fuzz=300 if quick else 2000)
            stacks.down()
    finally:
        stacks.down()
    return results


def table(results, meta):
    """The markdown fault table: fault / what clients see / measured."""
    rows = []
    k = results.get("kill9")
    if k:
        rows.append(
            (
                "An instance is killed (`kill -9`) under load",
                "Its clients lose their connection and reconnect to the other instances; nobody else notices",
                f"{k['clients']} clients echoing every {k['echo_interval_s']}s, {k['moved_clients']} on the victim: "
                f"HAProxy marked it DOWN after {k['marked_down_s']}s; all {k['recovered_clients']} echo again after "
                f"{k['recovery_max_s']}s at most (median {k['recovery_median_s']}s); other clients: "
                f"{k['others_disconnects']} disconnects, {k['others_failed_echoes']} failed echoes",
            )
        )
    r = results.get("rolling_restart")
    if r:
        spread = "; ".join(
            f"{i['name']}: {i['closes']} closed {i['first_close_s']}–{i['last_close_s']}s after SIGTERM, "
            f"exit {i['stopped_after_s']}s, UP again {i['up_again_after_s']}s"
            for i in r["instances"]
        )
        rows.append(
            (
                "Rolling restart of every instance (`scripts/rolling-restart`)",
                "Each instance stops taking new clients, closes its connections over a spread, exits; its clients "
                "reconnect elsewhere. New clients are never refused",
                f"{r['clients']} clients + new clients at 5/s: {r['handshakes']['failed']} failed of "
                f"{r['handshakes']['ok'] + r['handshakes']['failed']} handshakes; {r['reconnects']} reconnects, each "
                f"connected again within {r['back_max_s']}s (median {r['back_median_s']}s) and echoing within "
                f"{r.get('echo_back_max_s')}s; slowest exit {r['slowest_exit_s']}s (graceful_timeout "
                f"{r['graceful_timeout_s']}s, {r['graceful_timeout_warnings']} graceful-timeout kills); total "
                f"{r['total_s']}s. {spread}",
            )
        )
    o = results.get("redis_outage")
    if o:
        rows.append(
            (
                "Redis goes away, then comes back",
                "Every instance keeps serving its own clients (acks, rooms on the same instance); emits to other "
                "instances are dropped meanwhile; they resume by themselves",
                f"{o['outage_s']}s outage: echoes {o['echoes_ok_during']}, same-instance room messages "
                f"{o['local_room_delivery_during']}, cross-instance {o['cross_instance_delivered_during']} (dropped); "
                f"cross-instance delivery back {o['resumed_after_s']}s after Redis; {o['queue_warnings_logged']} "
                f"warning lines for {o['emits_during']}+ emits, {o['tracebacks_logged']} tracebacks",
            )
        )
    s = results.get("redis_at_start")
    if s:
        rows.append(
            (
                "Redis is down when an instance starts",
                "The instance waits for it (`REDIS_WAIT_SECONDS`, logged) instead of crash-looping",
                f"Redis started {s['redis_started_after_s']}s later: instance alive while waiting "
                f"({s['alive_while_waiting']}), ready {s['ready_after_redis_s']}s after Redis, "
                f"{s['worker_boots']} worker boot(s), {s['tracebacks_logged']} tracebacks",
            )
        )
    h = results.get("reload")
    if h:
        rows.append(
            (
                "HAProxy reload with a changed configuration",
                "Nothing: established WebSockets and polling sessions continue, new connections succeed",
                f"{h['clients']} established clients ({h['websocket_clients']} WebSocket) observed {h['observed_s']}s: "
                f"{h['established_disconnects']} disconnects, {h['failed_echoes']} failed echoes; new clients: "
                f"{h['handshakes']['failed']} failed of {h['handshakes']['ok'] + h['handshakes']['failed']}; new "
                f"config active: {h['new_config_active']}",
            )
        )
    b = results.get("bad_input")
    if b:
        v, p = b["victims"], b["process"]
        rows.append(
            (
                "Bad input at one process: malformed Engine.IO/Socket.IO packets (polling and WebSocket), "
                f"{b['fuzz']['payloads']} fuzzed frames, oversized payloads, an event flood, "
                f"{b['rooms']['asked']} room joins",
                "The sender gets an `error` event, an error ack, 400/413, or its connection closed; other clients of "
                "the same process see nothing",
                f"{b['attack_s']}s of attack: well-behaved clients {v['failed_during']} failed of "
                f"{v['echoes_during']} echoes, p50 {v['p50_before_ms']} ms before / {v['p50_during_ms']} ms during, "
                f"max {v['max_during_ms']} ms; flood: {b['flood']['acked']} of {b['flood']['sent']} served, "
                f"disconnected: {b['flood']['disconnected']}; rooms: {b['rooms']['joined']} joined, then "
                f"refused; process restarted: {not p['same_pids']}, tracebacks {p['tracebacks_logged']}",
            )
        )
    lines = [
        TABLE_BEGIN,
        "",
        f"Measured {meta['date']} on {meta['machine']} by `bench/measure_faults.py"
        f"{' --quick' if meta['quick'] else ''}` (raw figures: `docs/faults.json`).",
        "",
        "| fault | what clients see | measured |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {a} | {b_} | {c} |" for a, b_, c in rows]
    lines += ["", TABLE_END]
    return "\n".join(lines)


def write(results, quick, meta=None):
    machine = f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    meta = meta or {"date": time.strftime("%Y-%m-%d"), "quick": quick, "machine": machine}
    DOCS.mkdir(exist_ok=True)
    previous = json.loads(FAULTS_JSON.read_text()) if FAULTS_JSON.exists() else {}
    merged = {**previous.get("results", {}), **results}
    FAULTS_JSON.write_text(json.dumps({"meta": meta, "results": merged}, indent=2) + "\n")
    block = table(merged, meta)
    text = OPERATIONS_MD.read_text() if OPERATIONS_MD.exists() else f"# Operations\n\n{TABLE_BEGIN}\n{TABLE_END}\n"
    if TABLE_BEGIN in text and TABLE_END in text:
        head, rest = text.split(TABLE_BEGIN, 1)
        tail = rest.split(TABLE_END, 1)[1]
        text = head + block + tail
    else:
        text += "\n" + block + "\n"
    OPERATIONS_MD.write_text(text)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller loads and shorter outages")
    parser.add_argument("--only", help="comma-separated scenarios (default: all)")
    parser.add_argument("--no-write", action="store_true", help="print the results, write nothing")
    parser.add_argument("--render", action="store_true", help="only rewrite the table from docs/faults.json")
    parser.add_argument("--python", default=str(Path(sys.executable)), help="the venv's python (gunicorn beside it)")
    args = parser.parse_args(argv)
    if args.render:
        saved = json.loads(FAULTS_JSON.read_text())
        write({}, saved["meta"]["quick"], meta=saved["meta"])
        return 0
    results = run(args)
    print(json.dumps(results, indent=2))
    if not args.no_write:
        write(results, args.quick)
        print(f"wrote {FAULTS_JSON.relative_to(ROOT)} and the table in {OPERATIONS_MD.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
