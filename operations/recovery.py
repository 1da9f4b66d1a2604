"""Connection state recovery (CONNECTION_STATE_RECOVERY=true): after a cut of up to RECOVERY_MAX_DISCONNECTION
seconds a client gets back its socket id, its rooms, its session data and every packet it missed, on any
instance. The wire protocol is Socket.IO's own (Node's socket.io >= 4.6), so socket.io-client and the browser
client recover with no change on their side; python-socketio's client does not implement it (it gets the offset
as an extra last argument of each event, and a new session after a cut).

What is kept in Redis (keys under `<SOCKETIO_CHANNEL>:recovery:`):

- `stream`: every emit to one socket, a room or everyone (not those that ask for an ack, which cannot be
  answered from another instance), as a Redis Stream entry. Its id is the packet's offset: the server appends
  it as the last argument of the event, and the client sends the last one it got back when it reconnects.
  Bounded by STREAM_MAXLEN entries and by the window's age (approximate trims, like Node's redis-streams
  adapter).
  One Lua script adds the entry and publishes it on the queue's channel, so every instance delivers packets in
  the stream's order, its own clients' included (they get them through Redis too, not first).
- `session:<pid>`: one record per socket (its id, namespace, rooms, the Flask session of its handlers, the
  instance that holds it), written at connect and on each room change, refreshed while connected, marked
  disconnected on a cut (not on a client's own disconnect). The pid is a random secret sent to that client only.
- `instance:<host id>`: each instance's last heartbeat, so that a record left by a killed instance counts as
  disconnected since then. Its Redis connections carry the same name (CLIENT SETNAME): when they are all gone
  (the kernel closes a killed process's sockets at once) it is dead without waiting for the heartbeat to age.

A CONNECT with {pid, offset} restores the session when the record exists, is in the window, is for this
namespace, and the entry at `offset` is one that socket received (an offset of another session, an unknown or
forged pid, or an offset trimmed from the stream: a new session, as without recovery). The replay is exactly
once and in order: the socket's deliveries are held back while a second script claims the record, reads the
missed entries and publishes a marker; this instance's listener replays them when it reaches the marker, so
packets before it come from the replay and packets after it live.

The server side replaces non-public methods of python-socketio (patches/connection_recovery.py, pinned): with
another version the setting has no effect (one log line) and every connection is a new session.
"""

from __future__ import annotations

import json
import logging
import time

log = logging.getLogger("realtime.recovery")

STREAM_MAXLEN = 10_000  # packets kept for replay at most (Node's redis-streams adapter keeps 10,000 too)
HEARTBEAT_SECONDS = 0.5  # how often each instance says it is alive
DEAD_AFTER_SECONDS = 2.0  # an instance silent this long is gone: the sessions it held count as disconnected
REPLAY_WAIT_SECONDS = 5.0  # longest wait for this instance's listener to reach a restore's marker
MAX_ID_LENGTH = 64  # pid and offset from the client: longer ones are not looked up
STREAM_ORIGIN = "recovery-stream"  # host_id of packets from the stream: every instance delivers them, its own too
RECOVERED_KEY = "realtime.recovered_namespaces"  # in a connection's environ: the namespaces it was restored in

# KEYS: stream; ARGV: message with the placeholder (twice: last argument and "offset"), placeholder, maxlen, max
# age ms, channel. Returns the offset.
APPEND_SCRIPT = """
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 'm', ARGV[1])
local now = redis.call('TIME')
local oldest = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) - tonumber(ARGV[4])
redis.call('XTRIM', KEYS[1], 'MINID', '~', oldest)
redis.call('PUBLISH', ARGV[5], (string.gsub(ARGV[1], ARGV[2], id, 2)))
return id
"""

# KEYS: session record, stream; ARGV: the record as read, offset, marker message, channel.
# Returns the entries after the offset, or false (record changed or claimed, offset gone).
CLAIM_SCRIPT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return false end
local at = redis.pcall('XRANGE', KEYS[2], ARGV[2], ARGV[2])
if type(at) ~= 'table' or at.err or #at == 0 then return false end
redis.call('DEL', KEYS[1])
local missed = redis.call('XRANGE', KEYS[2], '(' .. ARGV[2], '+')
redis.call('PUBLISH', ARGV[4], ARGV[3])
return missed
"""


def connection_name(channel, host_id):
    """The name of an instance's recovery connections to Redis (CLIENT SETNAME takes no spaces)."""
    return f"{channel}:recovery:{host_id}".replace(" ", "-")


def offset_key(offset):
    """A stream id ("1700000000000-3") as a tuple that sorts like the stream."""
    milliseconds, _, sequence = offset.partition("-")
    return int(milliseconds), int(sequence or 0)


def text(value):
    return value.decode() if isinstance(value, bytes) else value


def addressed_to(message, namespace, sid, rooms):
    """Whether a queued emit (python-socketio's pub/sub message) reached the socket `sid` of `namespace` that
    was in `rooms` (its own sid room included): what a replay sends, and what an offset must point at."""
    if (message.get("namespace") or "/") != namespace:
        return False
    room = message.get("room")
    if room is not None:
        targets = room if isinstance(room, list) else [room]
        if not any(target in rooms for target in targets):
            return False
    skip = message.get("skip_sid")
    skipped = skip if isinstance(skip, list) else [skip]
    return sid not in skipped


class Restore:
    """A session being restored on this instance: what was read, then what the claim returned."""

    def __init__(self, pid, offset, raw_record, record, make_event):
        self.pid = pid
        self.offset = offset
        self.raw_record = raw_record
        self.sid = record["sid"]
        self.namespace = record["ns"]
        self.rooms = list(record.get("rooms") or [])
        self.data = record.get("data")
        self.token = None
        self.missed = None  # [(offset, message)] once claimed
        self.claimed = make_event()
        self.replayed = make_event()


class SessionStore:
    """The Redis side of recovery: packets with offsets, session records, instance heartbeats."""

    def __init__(self, client, channel, window, host_id):
        self.client = client
        self.channel = channel
        self.window = float(window)
        self.host_id = host_id
        self.prefix = f"{channel}:recovery"
        self.stream = f"{self.prefix}:stream"
        # while connected a record outlives the refresh that keeps it; after a kill it ends past the window
        self.refresh_seconds = max(HEARTBEAT_SECONDS, min(30.0, self.window / 4))
        self.connected_ttl_ms = int((self.window + 2 * self.refresh_seconds) * 1000)
        self.append_script = client.register_script(APPEND_SCRIPT)
        self.claim_script = client.register_script(CLAIM_SCRIPT)

    def session_key(self, pid):
        return f"{self.prefix}:session:{pid}"

    def instance_key(self, host_id):
        return f"{self.prefix}:instance:{host_id}"

    def has_connections(self, host_id):
        """Whether Redis has a connection of that instance; True if Redis will not say (CLIENT LIST refused)."""
        name = connection_name(self.channel, host_id)
        try:
            return any(client.get("name") == name for client in self.client.client_list())
        except Exception:  # noqa: BLE001 - e.g. CLIENT LIST not allowed by an ACL: the heartbeat decides alone
            return True

    # --- packets --------------------------------------------------------------------------------------
    def append(self, message, placeholder):
        """Adds an emit to the stream and publishes it with its offset in place of `placeholder`."""
        offset = self.append_script(
            keys=[self.stream],
            args=[message, placeholder, STREAM_MAXLEN, int(self.window * 1000), self.channel],
        )
        return text(offset)

    # --- session records ------------------------------------------------------------------------------
    def record(self, sid, namespace, rooms, data, state="connected", disconnected_at=None):
        record = {"sid": sid, "ns": namespace, "rooms": rooms, "data": data, "owner": self.host_id, "state": state}
        if disconnected_at is not None:
            record["at"] = disconnected_at
        return json.dumps(record, separators=(",", ":"))

    def save_connected(self, pipe, pid, sid, namespace, rooms, data):
        pipe.set(self.session_key(pid), self.record(sid, namespace, rooms, data), px=self.connected_ttl_ms)

    def save_disconnected(self, pid, sid, namespace, rooms, data):
        record = self.record(sid, namespace, rooms, data, "disconnected", time.time())
        self.client.set(self.session_key(pid), record, px=int(self.window * 1000))

    def entries_after(self, offset, count=STREAM_MAXLEN):
        """[(offset, message)] of the stream after `offset`, oldest first."""
        return [
            (text(entry_id), json.loads(fields[b"m"]))
            for entry_id, fields in self.client.xrange(self.stream, f"({offset}", "+", count=count)
        ]

    def forget(self, pid):
        self.client.delete(self.session_key(pid))

    def heartbeat(self):
        self.client.set(self.instance_key(self.host_id), int(time.time() * 1000), px=int((self.window + 60) * 1000))

    # --- restoring ------------------------------------------------------------------------------------
    def prepare(self, pid, offset, namespace, make_event, sleep):
        """A Restore if the session `pid` can be restored from `offset` (nothing is changed yet), else None and
        why not."""
        key = self.session_key(pid)
        raw = self.client.get(key)
        deadline = time.monotonic() + DEAD_AFTER_SECONDS + 1
        while True:
            if raw is None:
                return None, "unknown or expired session"
            record = json.loads(raw)
            if record.get("ns") != namespace:
                return None, "session of another namespace"
            if record.get("state") == "disconnected":
                disconnected_at = record.get("at", 0)
                break
            # still marked connected: its instance was killed, or has not yet seen the connection go
            seen = self.client.get(self.instance_key(record.get("owner")))
            if seen is None:
                return None, "its instance is gone since longer than the window"
            if time.time() - int(seen) / 1000 > DEAD_AFTER_SECONDS or not self.has_connections(record.get("owner")):
                disconnected_at = int(seen) / 1000
                break
            if time.monotonic() > deadline:
                return None, "its old connection is still open on a live instance"
            sleep(0.2)
            raw = self.client.get(key)
        if time.time() - disconnected_at > self.window:
            return None, "disconnected longer than the window"
        try:
            at = self.client.xrange(self.stream, offset, offset)
        except Exception:  # noqa: BLE001 - a malformed offset is an error reply
            return None, "malformed offset"
        if not at:
            return None, "offset not in the stream (too old, or never sent)"
        restore = Restore(pid, offset, raw, record, make_event)
        if not addressed_to(json.loads(at[0][1][b"m"]), namespace, restore.sid, restore.rooms):
            return None, "offset of a packet this session did not receive"
        return restore, None

    def claim(self, restore, marker):
        """Takes the record (so no other instance restores it too), reads the missed entries and publishes
        `marker` after them, atomically. False if the record changed meanwhile."""
        missed = self.claim_script(
            keys=[self.session_key(restore.pid), self.stream],
            args=[restore.raw_record, restore.offset, marker, self.channel],
        )
        if missed is None:
            return False
        restore.missed = []
        for entry_id, fields in missed:
            fields = dict(zip(fields[::2], fields[1::2], strict=True))
            message = json.loads(fields[b"m"])
            if addressed_to(message, restore.namespace, restore.sid, restore.rooms):
                restore.missed.append((text(entry_id), message))
        return True


def recovered():
    """Inside a Socket.IO handler (connect included): whether this socket came back by connection state recovery,
    with its id, rooms, session and missed packets (Node's `socket.recovered`)."""
    from flask import request

    return request.namespace in request.environ.get(RECOVERED_KEY, ())


def install(socketio, settings):
    """Called by operations.install(): puts recovery on the server if the settings ask for it and the manager
    made by operations/message_queue.py supports it; else one log line says why it is off."""
    if not settings.connection_state_recovery:
        return False
    from patches import connection_recovery

    manager = socketio.server.manager
    if not isinstance(manager, connection_recovery.RecoveryManager):
        reason = "it needs REDIS_URL" if not settings.redis_url else "patch connection_recovery stays off"
        log.warning("CONNECTION_STATE_RECOVERY=true has no effect: %s; every connection is a new session", reason)
        return False
    connection_recovery.install(socketio.server)
    log.info(
        "connection state recovery on: sessions kept %.0fs after a cut, up to %d packets for replay",
        settings.recovery_max_disconnection,
        STREAM_MAXLEN,
    )
    return True
