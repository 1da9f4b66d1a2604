"""Connection state recovery scenarios against a real native stack (HAProxy, Redis, gunicorn instances), with
Node's socket.io-client as the room's members and a python-socketio client as the sender.
tests/deployment/test_recovery.py runs them small and asserts on them; bench/measure_recovery.py runs them and
writes the figures of docs/operations.md#connection-state-recovery.

A sender says numbered messages to a room at `rate` per second; members (tests/deployment/node/
recovery-member.mjs) record what they get; then a fault hits the members of one instance (not the sender's):
`kill` (kill -9), `restart` (a graceful restart: drain, then the instance closes its sockets), `cut` (HAProxy
cuts that instance's sessions and refuses new ones for `cut_s` seconds, the instance stays up), `unsubscribe`
(Redis drops every instance's subscription to the queue; clients stay connected). Per member: messages lost,
duplicated, out of order, whether its reconnect was a recovery with the same id, and the time from the fault
to the last message it missed (received through the replay). Needs scripts/ on sys.path (the tests' conftest
and bench/measure_recovery.py put it there).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time

import socketio
from native_stack import ROOT, haproxy_command
from rolling_restart import restart_instance

MEMBER_SCRIPT = ROOT / "tests" / "deployment" / "node" / "recovery-member.mjs"


def epoch_ms():
    return time.time() * 1000


class Member:
    """One Node room member (tests/deployment/node/recovery-member.mjs) in its own process."""

    def __init__(self, url, room, transports, timeout_s=180):
        options = {"url": url, "room": room, "transports": transports, "timeoutMs": int(timeout_s * 1000)}
        self.proc = subprocess.Popen(
            ["node", str(MEMBER_SCRIPT), json.dumps(options)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        self.ready = None

    def wait_joined(self):
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("a member exited before joining its room")
        self.ready = json.loads(line)
        return self.ready

    def stop(self):
        try:
            self.proc.stdin.write("stop\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass
        out = self.proc.communicate(timeout=30)[0]
        return json.loads(out.strip().splitlines()[-1])


class Sender:
    """A python-socketio client that says numbered messages to a room, `rate` per second, each acked."""

    def __init__(self, url, room, rate, transports=("websocket",)):
        self.client = socketio.Client(reconnection=False)
        self.client.connect(url, transports=list(transports), wait_timeout=10)
        self.instance = self.client.call("whoami", timeout=10)
        self.room = room
        self.rate = rate
        self.sent = []  # (number, epoch ms) of each message the server acked
        self.failures = 0
        self.running = False
        self.thread = None

    def start(self):
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        number = 0
        started = time.monotonic()
        while self.running:
            at = epoch_ms()
            try:
                reply = self.client.call("say", {"room": self.room, "message": str(number)}, timeout=5)
                if isinstance(reply, dict) and reply.get("ok"):
                    self.sent.append((str(number), at))
                else:
                    self.failures += 1
            except Exception:  # noqa: BLE001 - counted
                self.failures += 1
            number += 1
            time.sleep(max(0.0, started + number / self.rate - time.monotonic()))

    def stop(self):
        self.running = False
        self.thread.join(timeout=10)
        self.client.disconnect()


def cut_sessions(state, victim, cut_s):
    """HAProxy cuts every session of `victim` and accepts no new connection for `cut_s` seconds (its public
    listener paused: reconnects wait in the backlog); the instances, and the other clients' connections, stay."""
    sock = state["haproxy"]["socket"]
    haproxy_command(sock, "disable frontend public")
    try:
        haproxy_command(sock, f"shutdown sessions server app/{victim}")
        time.sleep(cut_s)
    finally:
        haproxy_command(sock, "enable frontend public")


def analyse(member, sent, fault_at, fault_victim):
    """What one member saw, against what the sender had acked."""
    expected = [number for number, _ in sent]
    got = member["messages"]
    position = {number: index for index, number in enumerate(expected)}
    seen = set()
    duplicates = sum(1 for number in got if number in seen or seen.add(number))
    in_order = [position[number] for number in got if number in position]
    out_of_order = sum(1 for a, b in zip(in_order, in_order[1:], strict=False) if b <= a)
    connects = member["connects"]
    affected = connects and connects[0]["instance"] == fault_victim
    row = {
        "instance": connects[0]["instance"] if connects else None,
        "affected": bool(affected),
        "received": len(got),
        "lost": len(set(expected) - set(got)),
        "duplicates": duplicates,
        "out_of_order": out_of_order,
        "unexpected": len(set(got) - set(expected)),
        "exactly_once_in_order": got == expected,
        "connects": len(connects),
        "recovered": [c["recovered"] for c in connects[1:]],
        "same_id": all(c["id"] == connects[0]["id"] for c in connects) if connects else False,
        "disconnects": [d["reason"] for d in member["disconnects"]],
        "with_offset": member["offsets"],
        "errors": member["errors"],
    }
    if affected and len(connects) > 1:
        back_at = connects[1]["at"]
        # the last message sent before the member was back is the last one it had to get through the replay
        missed = [index for index, (_, at) in enumerate(sent) if at < back_at and at >= fault_at - 1000]
        if missed and expected[missed[-1]] in got:
            arrived = member["receivedAt"][got.index(expected[missed[-1]])]
            row["fault_to_last_missed_ms"] = round(arrived - fault_at)
        row["fault_to_reconnect_ms"] = round(back_at - fault_at)
        # sent once it was back: they reach it only if it is in the room again
        row["received_sent_after_back"] = len({number for number, at in sent if at > back_at} & set(got))
    return row


def scenario(stack, fault="kill", members=6, rate=50, before_s=3.0, after_s=6.0, cut_s=10.0, transports=None):
    """Members join a room, the sender says messages, the fault hits one instance's members; per-member rows."""
    url = stack.status()["url"]
    state = stack.load()
    transports = transports or (["websocket"] if fault == "cut" else ["polling", "websocket"])
    room = f"recovery-{fault}"
    sender = Sender(url, room, rate)
    crowd = [Member(url, room, transports) for _ in range(members)]
    try:
        placement = [member.wait_joined()["instance"] for member in crowd]
        counts = {name: placement.count(name) for name in set(placement) if name != sender.instance}
        if not counts:
            raise RuntimeError(f"every member is on the sender's instance {sender.instance}")
        victim = max(counts, key=counts.get)
        sender.start()
        time.sleep(before_s)
        fault_at = epoch_ms()
        app = next(app for app in state["apps"] if app["name"] == victim)
        if fault == "kill":
            os.killpg(app["pid"], signal.SIGKILL)
        elif fault == "restart":
            restart_instance(stack, state, app)
        elif fault == "cut":
            cut_sessions(state, victim, cut_s)
        elif fault == "unsubscribe":  # Redis drops every instance's subscription (as it does a slow subscriber)
            import redis

            client = redis.Redis.from_url(state["redis"]["url"])
            client.client_kill_filter(_type="pubsub")
            client.close()
        else:
            raise ValueError(f"unknown fault {fault!r}")
        time.sleep(after_s)
        sender.stop()
        time.sleep(1.5)  # the last messages arrive
    finally:
        if sender.running:
            sender.stop()
        rows = [member.stop() for member in crowd]
    result = {
        "fault": fault,
        "victim": victim,
        "sender_instance": sender.instance,
        "sent": len(sender.sent),
        "send_failures": sender.failures,
        "members": [analyse(row, sender.sent, fault_at, victim) for row in rows],
    }
    affected = [m for m in result["members"] if m["affected"]]
    result["affected_members"] = len(affected)
    result["lost_total"] = sum(m["lost"] for m in result["members"])
    result["duplicates_total"] = sum(m["duplicates"] for m in result["members"])
    times = [m["fault_to_last_missed_ms"] for m in affected if "fault_to_last_missed_ms" in m]
    result["fault_to_last_missed_ms_max"] = max(times) if times else None
    result["fault_to_reconnect_ms_max"] = max((m.get("fault_to_reconnect_ms", 0) for m in affected), default=None)
    return result
