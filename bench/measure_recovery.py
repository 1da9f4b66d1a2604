"""Connection state recovery against a real native stack (HAProxy, Redis, gunicorn instances), with Node's
socket.io-client as the room's members and a python-socketio client as the sender. The fault scenarios are
tests/deployment/scenarios_recovery.py's (tests/deployment/test_recovery.py runs them small and asserts on
them); this script runs them, measures the footprint, and writes the figures:

    .venv/bin/python bench/measure_recovery.py              # bench/results/recovery/latest.json
    .venv/bin/python bench/measure_recovery.py --no-write   # print only

Two parts. The faults (`kill`, `restart`, `cut`, `unsubscribe`: see tests/deployment/scenarios_recovery.py),
recovery on and off, per member: messages lost, duplicated, out of order, whether its reconnect was a recovery
with the same id, and the time from the fault to the last message it missed. The footprint: Redis's memory and
CPU with 1,000 idle WebSocket clients (session records, heartbeats), and its memory per packet kept for replay,
with recovery on and off. bench/figures.py puts the results into docs/operations.md and docs/configuration.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import socketio

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "scripts"), str(ROOT / "tests" / "deployment")]

from native_stack import Stack, free_port  # noqa: E402
from scenarios_faults import stack_env  # noqa: E402
from scenarios_recovery import scenario  # noqa: E402

ECHOERS_SCRIPT = ROOT / "tests" / "deployment" / "node" / "sio-echoers.mjs"
RESULTS = ROOT / "bench" / "results" / "recovery"


def redis_info(url):
    import redis

    client = redis.Redis.from_url(url)
    try:
        return client.info("memory")["used_memory"], client.dbsize(), client
    except Exception:
        client.close()
        raise


def cpu_seconds(pid):
    """User + system CPU seconds of a process so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def footprint(stack, clients=1000, idle_s=35.0, packets=200):
    """Redis with `clients` idle WebSocket clients: memory and CPU; then its memory per packet kept for replay."""
    state = stack.load()
    url = state["redis"]["url"]
    base_memory, _, probe = redis_info(url)
    options = {
        "url": stack.status()["url"],
        "clients": clients,
        "durationMs": int((idle_s + 40) * 1000),
        "echoEveryMs": 3_600_000,  # one echo each, then idle
        "transports": ["websocket"],
        "rampMs": 5000,
    }
    crowd = subprocess.Popen(
        ["node", str(ECHOERS_SCRIPT), json.dumps(options)], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    try:
        connected = json.loads(crowd.stdout.readline() or "{}").get("connected", 0)
        if connected != clients:
            raise RuntimeError(f"only {connected} of {clients} clients connected")
        time.sleep(3)  # every first echo answered, records written
        used, keys, _ = redis_info(url)
        cpu_before = cpu_seconds(state["redis"]["pid"])
        time.sleep(idle_s)
        idle_cpu_pct = 100 * (cpu_seconds(state["redis"]["pid"]) - cpu_before) / idle_s
        stream = f"{stack.env.get('SOCKETIO_CHANNEL', 'flask-socketio')}:recovery:stream"
        sender = socketio.Client(reconnection=False)
        sender.connect(options["url"], transports=["websocket"], wait_timeout=10)
        text = "x" * 100
        for number in range(packets):
            sender.call("broadcast", {"n": number, "text": text}, timeout=10)
        sender.disconnect()
        length = probe.xlen(stream) if probe.exists(stream) else 0
        stream_bytes = probe.memory_usage(stream, samples=0) if length else 0
    finally:
        crowd.kill()
        crowd.wait()
        probe.close()
    return {
        "clients": clients,
        "connected": connected,
        "redis_keys": keys,
        "redis_memory_mb_per_1000_clients": round((used - base_memory) / 1e6 * 1000 / max(connected, 1), 3),
        "redis_idle_cpu_pct_per_1000_clients": round(idle_cpu_pct * 1000 / max(connected, 1), 3),
        "packets_kept": length,
        "redis_bytes_per_packet_kept": round(stream_bytes / length) if length else None,
        "packet_payload_bytes": len(json.dumps({"n": 0, "text": text})),
    }


def make_stack(replicas, **env):
    stack = Stack(
        state_dir=tempfile.mkdtemp(prefix="recovery-"),
        port=free_port(),
        replicas=replicas,
        env=stack_env(**env),
    )
    stack.up()
    return stack


def run(args):
    results = {}
    for recovery in ("true", "false") if args.clients else ():
        # every client comes from 127.0.0.1: HAProxy's per-address limits raised, as bench/run does
        stack = make_stack(
            2,
            CONNECTION_STATE_RECOVERY=recovery,
            EVENT_RATE=0,
            HAPROXY_PER_IP_SESSION_RATE=1_000_000,
            HAPROXY_PER_IP_CONN_CUR=1_000_000,
        )
        try:
            key = f"footprint/recovery={recovery}"
            results[key] = footprint(stack, clients=args.clients)
            print(key, json.dumps(results[key]), flush=True)
        finally:
            stack.down()
    for recovery in ("true", "false"):
        for fault in [name for name in args.faults.split(",") if name]:
            stack = make_stack(
                3, CONNECTION_STATE_RECOVERY=recovery, EVENT_RATE=0, DRAIN_SECONDS=1, CLOSE_SPREAD_SECONDS=1
            )
            try:
                key = f"{fault}/recovery={recovery}"
                results[key] = scenario(stack, fault, members=args.members, rate=args.rate, cut_s=args.cut_s)
                print(key, json.dumps({k: v for k, v in results[key].items() if k != "members"}), flush=True)
            finally:
                stack.down()
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--faults", default="kill,restart,cut")
    parser.add_argument("--members", type=int, default=6)
    parser.add_argument("--rate", type=float, default=50)
    parser.add_argument("--cut-s", type=float, default=10)
    parser.add_argument("--clients", type=int, default=1000, help="footprint: idle clients (0: no footprint)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # a stop still runs the stacks' down()
    results = run(args)
    machine = f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    doc = {
        "meta": {"date": time.strftime("%Y-%m-%d"), "machine": machine, "members": args.members, "rate": args.rate},
        "results": results,
    }
    print(json.dumps(doc, indent=2))
    if not args.no_write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "latest.json").write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {(RESULTS / 'latest.json').relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
