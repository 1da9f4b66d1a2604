"""Connection state recovery (CONNECTION_STATE_RECOVERY, deployment/operations/recovery.py) end to end: real HAProxy,
Redis and gunicorn instances, Node's socket.io-client as the room's members (tests/deployment/node/recovery-member.mjs),
a python-socketio sender, and a raw Socket.IO client for what an official client never sends (forged pids,
foreign offsets). The scenarios are scenarios_recovery.py's; nothing here asserts on speed."""

import json
import secrets
import time

import pytest
import websocket
from scenarios_recovery import Sender, cut_sessions, scenario

from deployment.settings import ConfigError, Settings

# the full tier (tests/conftest.py): this module starts processes of the stack
pytestmark = [
    pytest.mark.stack,
    pytest.mark.node,  # node and tests/deployment/node's npm ci (tests/conftest.py skips or fails without)
]

RECOVERY = {"CONNECTION_STATE_RECOVERY": "true", "EVENT_RATE": 0}


def assert_everyone_got_everything_once_in_order(result):
    assert result["sent"] > 100 and result["send_failures"] == 0, result
    assert result["affected_members"] >= 1, result
    for member in result["members"]:
        assert member["exactly_once_in_order"], member
        assert member["lost"] == member["duplicates"] == member["out_of_order"] == 0, member
        assert member["with_offset"] == member["received"], member  # every room message carried its offset
        assert member["same_id"], member
        if member["affected"]:
            # back once, recovered, and the room's messages after the recovery reached it: still in the room
            assert member["recovered"] == [True], member
            assert member["received_sent_after_back"] > 50, member
        else:
            assert member["connects"] == 1, member


@pytest.mark.parametrize("transports", [None, ["polling"]], ids=["upgraded", "polling-only"])
def test_kill9_members_recover_every_message_once_in_order_with_their_id_and_rooms(own_stack, transports):
    result = scenario(own_stack(**RECOVERY), "kill", members=6, rate=50, before_s=3, after_s=6, transports=transports)
    print(json.dumps({k: v for k, v in result.items() if k != "members"}))
    assert_everyone_got_everything_once_in_order(result)


def test_control_kill9_without_recovery_loses_messages_and_gives_new_ids(own_stack):
    result = scenario(own_stack(EVENT_RATE=0), "kill", members=6, rate=50, before_s=3, after_s=6)
    print(json.dumps({k: v for k, v in result.items() if k != "members"}))
    affected = [member for member in result["members"] if member["affected"]]
    assert affected, result
    for member in affected:
        assert member["recovered"] == [False], member
        assert not member["same_id"], member
        assert member["lost"] > 0, member  # the messages of the gap: counted
        assert member["with_offset"] == 0, member  # no offsets without the setting
    assert result["lost_total"] == sum(member["lost"] for member in affected)


def test_rolling_restart_members_recover_every_message_once_in_order(own_stack):
    stack = own_stack(DRAIN_SECONDS=1, CLOSE_SPREAD_SECONDS=2, **RECOVERY)
    result = scenario(stack, "restart", members=6, rate=50, before_s=3, after_s=4)
    print(json.dumps({k: v for k, v in result.items() if k != "members"}))
    assert_everyone_got_everything_once_in_order(result)


def test_network_cut_of_10s_members_recover_every_message_once_in_order(own_stack):
    result = scenario(own_stack(**RECOVERY), "cut", members=4, rate=50, before_s=3, after_s=4, cut_s=10)
    print(json.dumps({k: v for k, v in result.items() if k != "members"}))
    assert_everyone_got_everything_once_in_order(result)
    affected = [member for member in result["members"] if member["affected"]]
    assert all(member["fault_to_reconnect_ms"] >= 9000 for member in affected), affected  # the cut lasted


def test_client_away_longer_than_the_window_gets_a_new_session_and_no_replay(own_stack):
    stack = own_stack(RECOVERY_MAX_DISCONNECTION=3, **RECOVERY)
    result = scenario(stack, "cut", members=4, rate=50, before_s=2, after_s=4, cut_s=7)
    print(json.dumps({k: v for k, v in result.items() if k != "members"}))
    affected = [member for member in result["members"] if member["affected"]]
    assert affected, result
    for member in affected:
        assert member["recovered"] == [False] and not member["same_id"], member
        assert member["lost"] > 0 and member["duplicates"] == 0, member  # the cut's messages: not replayed
    for member in result["members"]:
        if not member["affected"]:
            assert member["exactly_once_in_order"], member


# --- a raw Socket.IO client over WebSocket: sends what the official clients never would --------------------
class RawClient:
    """Engine.IO 4 / Socket.IO 5 over one WebSocket, by hand."""

    def __init__(self, url, auth=None):
        self.ws = websocket.create_connection(
            url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket", timeout=10
        )
        assert self.ws.recv().startswith("0")  # Engine.IO open
        self.events = []  # (event, args) received, the replay included
        self.ws.send("40" + (json.dumps(auth) if auth is not None else ""))
        self.connect = self._until(lambda p: p.startswith(("40", "44")))
        self.connect = json.loads(self.connect[2:])

    def _until(self, wanted, timeout=10):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            packet = self.ws.recv()
            if packet == "2":  # ping
                self.ws.send("3")
            elif packet.startswith("42"):
                event, *args = json.loads(packet[2:])
                self.events.append((event, args))
                if wanted(packet):
                    return packet
            elif wanted(packet):
                return packet
        raise TimeoutError("no such packet")

    def call(self, event, data, ack_id):
        self.ws.send(f"42{ack_id}" + json.dumps([event, data]))
        return json.loads(self._until(lambda p: p.startswith(f"43{ack_id}["))[2 + len(str(ack_id)) :])[0]

    def wait_message(self, text):
        self._until(lambda p: p.startswith("42") and json.loads(p[2:])[1].get("message") == text)
        return next(args for event, args in self.events if event == "message" and args[0]["message"] == text)

    def messages(self, settle=1.0):
        self.ws.settimeout(settle)
        try:
            while True:
                self._until(lambda p: False, timeout=settle)
        except (websocket.WebSocketTimeoutException, TimeoutError):
            pass
        return [args[0]["message"] for event, args in self.events if event == "message"]

    def cut(self):
        self.ws.shutdown()  # no close frame, no Socket.IO disconnect: a cut, as the network would make it


def test_forged_pid_and_foreign_offset_restore_nothing_and_leak_nothing(own_stack):
    stack = own_stack(replicas=2, **RECOVERY)
    url = stack.status()["url"]
    sender = Sender(url, "private", rate=1)
    victim = RawClient(url)
    assert victim.call("join", {"room": "private"}, 1)["ok"]
    user = RawClient(url)
    assert "pid" in user.connect and "pid" in victim.connect
    assert user.call("join", {"room": "public"}, 1)["ok"]
    for room, text in (("private", "secret-1"), ("public", "hello-1")):
        assert sender.client.call("say", {"room": room, "message": text}, timeout=10)["ok"]
    foreign_offset = victim.wait_message("secret-1")[-1]  # an offset of the victim's session
    own_offset = user.wait_message("hello-1")[-1]
    assert isinstance(foreign_offset, str) and isinstance(own_offset, str)
    user.cut()
    time.sleep(1)
    for room, text in (("private", "secret-2"), ("public", "hello-2")):  # while the user is away
        assert sender.client.call("say", {"room": room, "message": text}, timeout=10)["ok"]
    sid, pid = user.connect["sid"], user.connect["pid"]

    attempts = {
        "forged pid": {"pid": secrets.token_urlsafe(16), "offset": foreign_offset},
        "the victim's offset": {"pid": pid, "offset": foreign_offset},
        "pid of the wrong type": {"pid": {"$ne": None}, "offset": own_offset},
        "huge pid": {"pid": "x" * 100_000, "offset": own_offset},
        "malformed offset": {"pid": pid, "offset": "not-an-offset"},
        # the victim is still connected: its session is not taken over (the attempt waits, then is a new one)
        "a connected session's pid and offset": {"pid": victim.connect["pid"], "offset": foreign_offset},
    }
    for what, auth in attempts.items():
        attempt = RawClient(url, auth)
        assert attempt.connect["sid"] not in (sid, victim.connect["sid"]), what
        assert attempt.connect["pid"] not in (pid, victim.connect["pid"]), what
        assert attempt.messages() == [], what  # no replay: nothing of the victim's room, nothing of the user's
        attempt.cut()

    # control: the user's own pid and offset restore its session (so the checks above could fail)
    back = RawClient(url, {"pid": pid, "offset": own_offset})
    assert back.connect == {"sid": sid, "pid": pid}
    assert back.messages() == ["hello-2"]  # the public message it missed, once; nothing of "private"
    assert sender.client.call("say", {"room": "public", "message": "hello-3"}, timeout=10)["ok"]
    back.wait_message("hello-3")  # still in its room
    assert sender.client.call("say", {"room": "private", "message": "secret-3"}, timeout=10)["ok"]
    victim.wait_message("secret-3")  # the attempt on its session left it alone
    assert victim.messages() == ["secret-1", "secret-2", "secret-3"]
    sender.client.disconnect()


def test_python_socketio_client_gets_the_offset_as_an_extra_argument(own_stack, clients):
    """python-socketio's client does not implement recovery: documented, and shown here. Emits of the
    `flask emit` command (deployment/operations/emit_cli.py) go through the recovery stream too."""
    from deployment.operations.emit_cli import emit_event

    stack = own_stack(replicas=1, **RECOVERY)
    url = stack.status()["url"]
    listener = clients(url, transports=["websocket"])
    got = []
    listener.client.on("message", lambda *args: got.append(args))
    listener.client.on("announcement", lambda *args: got.append(args))
    assert listener.call("join", {"room": "py"})["ok"]
    assert listener.call("say", {"room": "py", "message": "m"})["ok"]
    emit_event(stack.status()["redis"]["url"], "flask-socketio", "announcement", {"text": "a"}, recovery_window=120)
    deadline = time.monotonic() + 10
    while len(got) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(got) == 2, got
    (message, offset), (announcement, later) = got
    assert message["message"] == "m" and announcement == {"text": "a"}
    assert isinstance(offset, str) and isinstance(later, str) and offset != later


def test_settings_are_checked():
    assert Settings.from_env({"APP_ENV": "development"}).connection_state_recovery is False
    on = Settings.from_env({"APP_ENV": "development", "CONNECTION_STATE_RECOVERY": "true"})
    assert on.connection_state_recovery and on.recovery_max_disconnection == 120
    for env in ({"CONNECTION_STATE_RECOVERY": "maybe"}, {"RECOVERY_MAX_DISCONNECTION": "0"}):
        with pytest.raises(ConfigError, match=next(iter(env))):
            Settings.from_env({"APP_ENV": "development", **env})


def test_cut_sessions_keeps_other_connections(own_stack, clients):
    """The cut scenario's tool: the victim instance's sessions go, the others' stay, no one connects meanwhile."""
    stack = own_stack(replicas=2)
    url = stack.status()["url"]
    recorders = [clients(url, transports=["websocket"]) for _ in range(4)]
    where = [recorder.call("whoami") for recorder in recorders]
    victim = where[0]
    cut_sessions(stack.load(), victim, 2)
    time.sleep(0.5)
    for recorder, instance in zip(recorders, where, strict=True):
        assert (recorder.disconnects > 0) == (instance == victim), (instance, victim)


def test_redis_outage_with_recovery_keeps_instances_serving_and_delivery_resumes(own_stack):
    """tests/deployment/test_faults.py's Redis outage with recovery on: emits fall back to the queue's own path (this
    instance's clients, no offset) and nothing breaks while Redis is away."""
    from scenarios_faults import scenario_redis_outage
    from test_faults import assert_served_through_the_redis_outage

    result = scenario_redis_outage(own_stack(**RECOVERY), clients=9, outage_s=4, emits_during=40)
    print(result)
    assert_served_through_the_redis_outage(result)


def test_hung_redis_with_recovery_bounds_each_emit_and_instances_keep_serving(own_stack):
    """test_faults.py's hung Redis with recovery on: an emit's stream append is bounded like a publish, then the
    emit falls back to the queue's own path (this instance's clients, no offset), dropped at once meanwhile."""
    from scenarios_faults import scenario_redis_hang
    from test_faults import assert_served_through_the_redis_hang

    result = scenario_redis_hang(own_stack(replicas=2, **RECOVERY), clients=6, hang_s=6, rounds=6)
    print(result)
    assert_served_through_the_redis_hang(result)


# --- unit checks of the pieces the end-to-end tests above rely on ---------------------------------------
def test_addressed_to_follows_rooms_namespace_and_skip_sid():
    from deployment.patches.connection_recovery import addressed_to

    rooms = ["S1", "lobby"]
    assert addressed_to({"namespace": "/", "room": None}, "/", "S1", rooms)  # a broadcast
    assert addressed_to({"namespace": "/", "room": "lobby"}, "/", "S1", rooms)
    assert addressed_to({"namespace": "/", "room": "S1"}, "/", "S1", rooms)  # to the socket itself
    assert addressed_to({"namespace": "/", "room": ["x", "lobby"]}, "/", "S1", rooms)
    assert not addressed_to({"namespace": "/", "room": "other"}, "/", "S1", rooms)
    assert not addressed_to({"namespace": "/demo", "room": None}, "/", "S1", rooms)
    assert not addressed_to({"namespace": "/", "room": "lobby", "skip_sid": "S1"}, "/", "S1", rooms)
    assert not addressed_to({"namespace": "/", "room": None, "skip_sid": ["S0", "S1"]}, "/", "S1", rooms)


def test_a_restored_socket_gets_its_session_and_nothing_live_before_its_replay():
    import threading

    from flask_socketio import _ManagedSession

    from deployment.operations.recovery import RecoveryManager
    from deployment.patches.connection_recovery import Restore

    class Server:  # what the manager uses of python-socketio's Server here
        environ = {"E1": {}}

    manager = RecoveryManager("redis://127.0.0.1:9/0", window=120)  # makes no connection until used
    manager.server = Server()
    record = {"sid": "S1", "ns": "/", "rooms": ["S1", "lobby"], "data": {"user": "ann"}}
    restore = Restore("pid", "1-0", json.dumps(record), record, threading.Event)
    assert manager.pre_connect_restored("E1", "/", restore) == "S1"
    assert manager.eio_sid_from_sid("S1", "/") == "E1"  # the old id, on the new connection
    session = Server.environ["E1"]["saved_session"]
    assert isinstance(session, _ManagedSession) and dict(session) == {"user": "ann"}
    assert manager._session_data("S1", "/") == {"user": "ann"}
    assert list(manager.get_participants("/", None)) == []  # held back until its replay
    manager.gated.clear()
    assert list(manager.get_participants("/", None)) == [("S1", "E1")]


def test_replay_sends_the_missed_packets_in_order_with_their_offsets_binary_included():
    import base64
    import threading

    from socketio import packet as sio_packet
    from socketio.packet import Packet

    from deployment.operations.recovery import RecoveryManager
    from deployment.patches.connection_recovery import Restore

    sent = []

    class Server:  # the parts of python-socketio's Server that a local emit uses
        environ = {"E1": {}}
        packet_class = Packet

        def _send_eio_packet(self, eio_sid, eio_packet):
            sent.append((eio_sid, eio_packet.data))

    manager = RecoveryManager("redis://127.0.0.1:9/0", window=120)
    manager.server = Server()
    record = {"sid": "S1", "ns": "/", "rooms": ["S1", "lobby"], "data": None}
    restore = Restore("pid", "1-0", json.dumps(record), record, threading.Event)
    manager.pre_connect_restored("E1", "/", restore)
    binary_args, attachments = Packet.deconstruct_binary([{"blob": b"\x00\x01"}, "placeholder"])
    restore.missed = [
        ("2-0", {"event": "message", "data": [{"n": 1}, "placeholder"], "binary": False}),
        ("3-0", {"event": "file", "data": [binary_args, base64.b64encode(attachments[0]).decode()], "binary": True}),
        ("4-0", {"event": "message", "data": ["placeholder"], "binary": False}),  # an emit without arguments
    ]
    restore.token = "t"
    manager.pending["t"] = restore
    restore.claimed.set()  # as finish_restore() does once the claim's reply is read
    manager._handle_emit({"method": "emit", "recovery_marker": "t"})  # the marker, as the listener gets it
    assert restore.replayed.is_set() and not manager.gated and not manager.pending
    assert all(eio_sid == "E1" for eio_sid, _ in sent)
    frames = [data for _, data in sent]
    assert frames[0] == Packet(sio_packet.EVENT, data=["message", {"n": 1}, "2-0"]).encode()
    assert frames[1].startswith("51-") and '"3-0"' in frames[1] and frames[2] == b"\x00\x01"  # header, attachment
    assert frames[3] == Packet(sio_packet.EVENT, data=["message", "4-0"]).encode()
    manager._handle_emit({"method": "emit", "recovery_marker": "t"})  # a marker seen twice replays once
    assert len(sent) == 4


def test_loadtest_counts_every_broadcast_with_recovery_on(own_stack):
    """scripts/loadtest.py's python-socketio clients take the offset argument: nothing is counted lost."""
    from test_loadtest import run_loadtest

    url = own_stack(**RECOVERY).status()["url"]
    code, summary = run_loadtest(url, "--scenario", "broadcast", "--senders", "2", "--rate", "2", clients=12)
    assert code == 0 and summary["errors"] == {}, summary
    broadcast = summary["broadcast"]
    assert broadcast["sent"] > 0 and broadcast["delivered"] == broadcast["expected"] == broadcast["sent"] * 12


def test_recovered_reads_the_namespaces_the_connection_was_restored_in():
    from flask import Flask, request

    from deployment.operations.recovery import RECOVERED_KEY, recovered

    app = Flask("unit")
    with app.test_request_context(environ_overrides={RECOVERED_KEY: {"/demo"}}):
        request.namespace = "/demo"
        assert recovered()
        request.namespace = "/"
        assert not recovered()
    with app.test_request_context():
        request.namespace = "/demo"
        assert not recovered()  # a new session, or recovery off


def test_first_client_of_a_fresh_instance_gets_its_first_emit_back(own_stack):
    """With recovery an instance's own clients get emits back through its subscription, which the first
    connection starts: the first emit, sent as soon as the first client is connected, must wait for it."""
    import socketio

    url = own_stack(replicas=1, **RECOVERY).status()["url"]
    got = []
    client = socketio.Client(reconnection=False)
    client.on("broadcast", lambda *args: got.append(args))
    client.connect(url, transports=["polling"], wait_timeout=10)
    try:
        client.emit("broadcast", {"first": True})  # no ack to wait for: the emit goes out at once
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            time.sleep(0.05)
        assert got and got[0][0] == {"first": True}, got  # with recovery the offset follows as a last argument
    finally:
        client.disconnect()


@pytest.mark.parametrize("recovery", ["true", "false"], ids=["recovery", "control-no-recovery"])
def test_a_lost_subscription_is_caught_up_from_the_stream(own_stack, recovery):
    """Redis drops the instances' subscriptions (as it does a subscriber that reads too slowly); each subscribes
    again within about a second. With recovery what was published meanwhile comes from the stream, once."""
    stack = own_stack(replicas=2, CONNECTION_STATE_RECOVERY=recovery, EVENT_RATE=0)
    result = scenario(stack, "unsubscribe", members=4, rate=50, before_s=2, after_s=4)
    print(json.dumps({k: v for k, v in result.items() if k != "members"}))
    assert all(member["connects"] == 1 for member in result["members"]), result  # nobody was disconnected
    if recovery == "true":
        assert all(member["exactly_once_in_order"] for member in result["members"]), result
    else:  # control: the members of the other instance lose what was published while it was unsubscribed
        assert result["lost_total"] > 0, result
