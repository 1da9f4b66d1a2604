"""Connection state recovery (deployment/operations/recovery.py says what it does) in python-socketio's server and
manager, with its session store in Redis.

python-socketio has no hook for the CONNECT answer (it must carry the session's `pid`, and a restored socket
its old id) nor for its listener's dispatch (a restore's replay must run at its marker), so this module
replaces `server._handle_connect` (its code, with the restore and the pid), wraps `server._handle_disconnect`
(to tell a cut from a client's own disconnect) and overrides `manager._handle_emit` (the marker). A restored
socket gets its Flask session back in Flask-SocketIO's own session class (`flask_socketio._ManagedSession`),
so Flask-SocketIO is pinned too. The rest uses the manager's public methods: `emit` (emits go through the
stream), `get_participants` (a restoring socket gets nothing live until its replay), `basic_enter_room` /
`basic_leave_room` / `disconnect` (the session record), and hooks of the queue manager it is mixed into.

`RecoveryMixin` is the manager's part; deployment/operations/recovery.py combines it with the queue's manager
(`class RecoveryManager(RecoveryMixin, QueueManager)`), whose methods it uses: `connect_redis(url, **options)`,
`socket_timeout`, `known_down()`, `unreachable(error)`, `reachable()` and `on_subscribed()` (the first emit
waits for the subscription that delivers it back; a new subscription first delivers from the stream what was
published while there was none).

CONNECTION_STATE_RECOVERY=true with a python-socketio or Flask-SocketIO version other than VERIFIED, or without
REDIS_URL, refuses the start with one line (`refusal()`; deployment/operations/recovery.py raises it as a
ConfigError). This module imports python-socketio and Flask-SocketIO only when it runs, so gunicorn's master can
call `refusal()` before gevent patches the worker. tests/deployment/test_recovery.py is what verifies a new
version.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
import time

from deployment.patches import pins

VERIFIED = {"python-socketio": ("5.18.1",), "flask-socketio": ("5.7.0",)}
REPLACES = ["server._handle_connect", "server._handle_disconnect", "manager._handle_emit"]
SERVES = "connection state recovery: same id, rooms and missed packets after a cut (deployment/operations/recovery.py)"
PROVEN_BY = "tests/deployment/test_recovery.py"

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


def describe(exc):
    return f"{type(exc).__name__}: {exc}".strip().rstrip(":")


def unreachable_error(exc):
    """Whether a failed Redis call means Redis is away or hung (not, say, a script error)."""
    import redis

    return isinstance(exc, (redis.ConnectionError, redis.TimeoutError, OSError))


def refusal(redis_url):
    """Why CONNECTION_STATE_RECOVERY=true cannot run, in one line naming what to do; None if it can. It needs
    REDIS_URL, and the library versions this module was verified against (VERIFIED). Imports no library."""
    if not redis_url:
        return (
            "CONNECTION_STATE_RECOVERY=true needs REDIS_URL (sessions and missed packets are kept in Redis): set "
            "REDIS_URL, or CONNECTION_STATE_RECOVERY=false to start without recovery"
        )
    if not pins.mismatches(VERIFIED):
        return None
    found = ", ".join(f"{dist} {pins.installed_version(dist) or 'not installed'}" for dist in VERIFIED)
    verified = ", ".join(f"{dist} {'/'.join(versions)}" for dist, versions in VERIFIED.items())
    return (
        f"CONNECTION_STATE_RECOVERY=true: connection state recovery replaces internals of python-socketio and "
        f"Flask-SocketIO and was verified against {verified}, found {found}: install the verified versions "
        "(requirements.txt), or set CONNECTION_STATE_RECOVERY=false to start without recovery"
    )


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


class RecoveryMixin:
    """The queue manager's part of recovery: emits through the recovery stream, a session record per socket.
    Mixed into the queue's manager (deployment/operations/recovery.py), before it in the bases."""

    def __init__(self, url, channel="flask-socketio", window=120.0, **kwargs):
        super().__init__(url, channel=channel, **kwargs)
        store_client = self.connect_redis(
            url, socket_timeout=self.socket_timeout, client_name=connection_name(channel, self.host_id)
        )
        self.store = SessionStore(store_client, channel, window, self.host_id)
        # alphanumeric (a Lua pattern without magic characters), random: no payload carries it by chance
        self.offset_placeholder = "RECOVERYOFFSET" + secrets.token_hex(16)
        self.pids = {}  # (namespace, sid) -> pid of this instance's connected sockets
        self.gated = set()  # (namespace, sid) of sockets being restored: no live packet until their replay
        self.cut = set()  # (namespace, sid) being disconnected by a cut (their session is kept)
        self.pending = {}  # marker token -> Restore
        self.last_delivered = None  # offset of the last stream packet the listener delivered

    def initialize(self):
        self.subscribed = self.server.eio.create_event()
        super().initialize()
        if not self.write_only:
            self.server.start_background_task(self._heartbeat_loop)
            # this instance's clients get every emit back through the subscription: none before it is there
            if not self.subscribed.wait(timeout=self.socket_timeout):
                log.warning(
                    "recovery: not subscribed to the queue within %.0fs; emits wait for it", self.socket_timeout
                )

    def on_subscribed(self):
        super().on_subscribed()
        self.subscribed.set()
        if self.last_delivered is not None:  # subscribed again: what was published meanwhile, from the stream
            try:
                missed = self.store.entries_after(self.last_delivered)
            except Exception as exc:  # noqa: BLE001 - Redis away again: the next subscription tries again
                log.debug("recovery: no catch-up after the subscription (%s)", describe(exc))
                return
            for offset, message in missed:
                message["offset"] = offset
                message["data"] = self._with_offset(message, offset)
                self._handle_emit(message)
            if missed:
                log.warning("recovery: %d packets published while unsubscribed delivered from the stream", len(missed))

    # --- emits: through the stream ------------------------------------------------------------------
    def emit(self, event, data, namespace=None, room=None, skip_sid=None, callback=None, to=None, **kwargs):
        from socketio.packet import Packet

        room = to or room
        if callback is not None or kwargs.get("ignore_queue") or self.known_down():
            # an ack cannot be replayed elsewhere; local-only emits and emits while Redis is away get no offset
            return super().emit(
                event, data, namespace=namespace, room=room, skip_sid=skip_sid, callback=callback, **kwargs
            )
        args = [] if data is None else list(data) if isinstance(data, tuple) else [data]
        args.append(self.offset_placeholder)
        binary = Packet.data_is_binary(args)
        if binary:
            args, attachments = Packet.deconstruct_binary(args)
            args = [args, *[base64.b64encode(a).decode() for a in attachments]]
        message = {
            "method": "emit",
            "event": event,
            "data": args,
            "binary": binary,
            "namespace": namespace or "/",
            "room": room,
            "skip_sid": skip_sid,
            "callback": None,
            "host_id": STREAM_ORIGIN,
            "offset": self.offset_placeholder,  # the listener's: what it delivered last
        }
        try:
            self.store.append(self.json.dumps(message), self.offset_placeholder)
        except Exception as exc:  # noqa: BLE001 - Redis away: the queue's own path (local delivery, one log line)
            log.debug("recovery stream unreachable (%s): emit without offset", describe(exc))
            if unreachable_error(exc):  # the queue's publish then drops it at once: one bounded wait, not two
                self.unreachable(exc)
            return super().emit(event, data, namespace=namespace, room=room, skip_sid=skip_sid)
        self.reachable()  # the script published it: an outage of the queue, if any, is over

    def get_participants(self, namespace, room):
        participants = super().get_participants(namespace, room)
        if not self.gated:
            return participants
        return ((sid, eio_sid) for sid, eio_sid in participants if (namespace, sid) not in self.gated)

    def _handle_emit(self, message):
        if "recovery_marker" in message:  # no one's packet: where a restore's replay goes
            restore = self.pending.get(message["recovery_marker"])
            if restore is not None:
                restore.claimed.wait(timeout=self.socket_timeout)  # its instance reads the claim's reply meanwhile
                self._replay(restore)
            return None
        offset = message.get("offset")
        if isinstance(offset, str):  # from the stream: once each, also after a catch-up
            if self.last_delivered is not None and offset_key(offset) <= offset_key(self.last_delivered):
                return None
            self.last_delivered = offset
        return super()._handle_emit(message)

    @staticmethod
    def _with_offset(message, offset):
        """A stream entry's arguments with its offset in place of the placeholder (the last one)."""
        data = list(message["data"])
        if message.get("binary"):
            data[0] = [*data[0][:-1], offset]
        else:
            data[-1] = offset
        return data

    # --- session records ----------------------------------------------------------------------------
    def basic_enter_room(self, sid, namespace, room, eio_sid=None):
        result = super().basic_enter_room(sid, namespace, room, eio_sid=eio_sid)
        if room is not None and room != sid:
            self._rooms_changed(sid, namespace)
        return result

    def basic_leave_room(self, sid, namespace, room):
        result = super().basic_leave_room(sid, namespace, room)
        self._rooms_changed(sid, namespace)
        return result

    def _rooms_changed(self, sid, namespace):
        if (namespace, sid) in self.pids and self.is_connected(sid, namespace):
            self._save_connected([(namespace, sid)])

    def disconnect(self, sid, namespace=None, **kwargs):
        namespace = namespace or "/"
        if kwargs.get("ignore_queue"):
            pid = self.pids.pop((namespace, sid), None)
            if pid is not None:
                self._keep_or_forget(pid, sid, namespace)
        return super().disconnect(sid, namespace=namespace, **kwargs)

    def _keep_or_forget(self, pid, sid, namespace):
        try:
            if (namespace, sid) in self.cut:
                rooms = self.get_rooms(sid, namespace)
                self.store.save_disconnected(pid, sid, namespace, rooms, self._session_data(sid, namespace))
            else:  # the client's own disconnect, or the server's: nothing to come back to
                self.store.forget(pid)
        except Exception as exc:  # noqa: BLE001 - Redis away: the record expires by itself
            log.debug("recovery: session of %s not saved (%s)", sid, describe(exc))

    def track(self, sid, namespace, pid):
        self.pids[(namespace, sid)] = pid
        self._save_connected([(namespace, sid)])

    def _save_connected(self, keys):
        try:
            pipe = self.store.client.pipeline(transaction=False)
            for namespace, sid in keys:
                pid = self.pids.get((namespace, sid))
                if pid is not None:
                    rooms = self.get_rooms(sid, namespace)
                    self.store.save_connected(pipe, pid, sid, namespace, rooms, self._session_data(sid, namespace))
            pipe.execute()
        except Exception as exc:  # noqa: BLE001 - Redis away: the next refresh writes it
            log.debug("recovery: session records not saved (%s)", describe(exc))

    def _session_data(self, sid, namespace):
        """The Flask session of the socket's handlers (Flask-SocketIO keeps it in the connection's environ)."""
        environ = self.server.environ.get(self.eio_sid_from_sid(sid, namespace)) or {}
        data = environ.get("saved_session")
        if not data:
            return None
        try:
            json.dumps(dict(data))
        except (TypeError, ValueError):
            return None  # not JSON: not kept
        return dict(data)

    def _heartbeat_loop(self):
        last_refresh = time.monotonic()
        while True:
            try:
                self.store.heartbeat()
                if time.monotonic() - last_refresh >= self.store.refresh_seconds:
                    last_refresh = time.monotonic()
                    self._save_connected(list(self.pids))
            except Exception as exc:  # noqa: BLE001 - Redis away: try again next beat
                log.debug("recovery heartbeat failed (%s)", describe(exc))
            self.server.sleep(HEARTBEAT_SECONDS)

    # --- restoring ----------------------------------------------------------------------------------
    def prepare_restore(self, eio_sid, namespace, auth):
        """A Restore when `auth` (the CONNECT data) asks for a session that can be restored here, else None."""
        if not isinstance(auth, dict):
            return None
        pid, offset = auth.get("pid"), auth.get("offset")
        if not isinstance(pid, str) or not isinstance(offset, str):
            return None
        if not 0 < len(pid) <= MAX_ID_LENGTH or not 0 < len(offset) <= MAX_ID_LENGTH:
            return None
        try:
            restore, why_not = self.store.prepare(
                pid, offset, namespace, self.server.eio.create_event, self.server.sleep
            )
        except Exception as exc:  # noqa: BLE001 - Redis away: a new session
            restore, why_not = None, describe(exc)
        if restore is not None and self.eio_sid_from_sid(restore.sid, namespace) is not None:
            restore, why_not = None, "its old connection is still open here"
        if restore is None:
            log.info("recovery: new session for %s [%s]: %s", eio_sid, namespace, why_not)
        return restore

    def pre_connect_restored(self, eio_sid, namespace, restore):
        """pre_connect() with the restored socket id and session; its deliveries held back until the replay."""
        sid = restore.sid
        self.gated.add((namespace, sid))
        try:
            self.basic_enter_room(sid, namespace, None, eio_sid=eio_sid)
        except Exception:  # noqa: BLE001 - already connected (bidict's ValueDuplicationError)
            self.gated.discard((namespace, sid))
            return None
        self.basic_enter_room(sid, namespace, sid, eio_sid=eio_sid)
        self.pending_connect.setdefault(namespace, []).append(sid)
        environ = self.server.environ.get(eio_sid)
        if environ is not None:
            environ.setdefault(RECOVERED_KEY, set()).add(namespace)  # what operations.recovery.recovered() reads
        if environ is not None and restore.data and "saved_session" not in environ:
            from flask_socketio import _ManagedSession  # the session Flask-SocketIO gives handlers, as it keeps it

            environ["saved_session"] = _ManagedSession(restore.data)  # before the connect handler sees it
        return sid

    def finish_restore(self, eio_sid, restore):
        """After the connect handler accepted: rooms back, the record claimed and the replay done.
        False if another connection claimed the session first."""
        sid, namespace = restore.sid, restore.namespace
        for room in restore.rooms:
            if room != sid:
                self.basic_enter_room(sid, namespace, room)
        restore.token = secrets.token_hex(16)
        marker = {
            "method": "emit",
            "event": "recovery-marker",
            "data": [],
            "namespace": namespace,
            "room": f"recovery-marker-{restore.token}",  # a room nobody is in, for a manager that ignores markers
            "skip_sid": None,
            "callback": None,
            "host_id": STREAM_ORIGIN,
            "recovery_marker": restore.token,
        }
        self.pending[restore.token] = restore
        try:
            claimed = self.store.claim(restore, json.dumps(marker))
        except Exception as exc:  # noqa: BLE001 - Redis away
            log.info("recovery: claim of %s failed (%s)", sid, describe(exc))
            claimed = False
        restore.claimed.set()
        if not claimed:
            self.pending.pop(restore.token, None)
            self.gated.discard((namespace, sid))
            return False
        if not restore.replayed.wait(timeout=REPLAY_WAIT_SECONDS):
            log.warning("recovery: no marker from the queue within %.0fs: replaying %s now", REPLAY_WAIT_SECONDS, sid)
            self._replay(restore)
        return True

    def _replay(self, restore):
        """Sends the missed packets, then lets live ones through; runs once per restore."""
        from socketio.packet import Packet

        if self.pending.pop(restore.token, None) is None:
            return
        sid, namespace = restore.sid, restore.namespace
        self.gated.discard((namespace, sid))
        for offset, message in restore.missed or []:
            data = message["data"]
            if message.get("binary"):
                attachments = [base64.b64decode(a) for a in data[1:]]
                data = Packet.reconstruct_binary(data[0], attachments)
            data[-1] = offset
            super().emit(message["event"], tuple(data), namespace=namespace, room=sid, ignore_queue=True)
        log.info("recovery: %s [%s] restored, %d missed packets replayed", sid, namespace, len(restore.missed or []))
        restore.replayed.set()


def install(server):
    """Puts recovery into a python-socketio Server whose manager has the RecoveryMixin
    (deployment/operations/recovery.py calls it once, after refusal() found nothing against it)."""
    original_handle_disconnect = server._handle_disconnect

    def handle_disconnect(eio_sid, namespace, reason=None):
        key = (namespace or "/", server.manager.sid_from_eio_sid(eio_sid, namespace or "/"))
        if reason is not None and reason != server.reason.CLIENT_DISCONNECT:
            server.manager.cut.add(key)  # a cut, not the client's own disconnect: its session is kept
        try:
            return original_handle_disconnect(eio_sid, namespace, reason)
        finally:
            server.manager.cut.discard(key)

    server._handle_disconnect = handle_disconnect
    server._handle_connect = handle_connect.__get__(server)


def handle_connect(self, eio_sid, namespace, data):
    """python-socketio 5.18.1's Server._handle_connect, with a restore before the connect handler and the
    session's pid in the CONNECT answer (marked `# recovery`)."""
    from socketio import exceptions, packet  # recovery: imported when used (see the module docstring)

    namespace = namespace or "/"
    manager = self.manager
    sid = None
    restore = None  # recovery
    if (
        namespace in self.handlers
        or namespace in self.namespace_handlers
        or self.namespaces == "*"
        or namespace in self.namespaces
    ):
        if not self.always_connect:  # recovery (always_connect answers before the handler: not supported)
            restore = manager.prepare_restore(eio_sid, namespace, data)
        if restore is not None:  # recovery
            sid = manager.pre_connect_restored(eio_sid, namespace, restore)
            if sid is None:
                restore = None
        if sid is None:
            sid = manager.pre_connect(eio_sid, namespace)
    if sid is None:
        self._send_packet(
            eio_sid, self.packet_class(packet.CONNECT_ERROR, data="Unable to connect", namespace=namespace)
        )
        return

    if self.always_connect:
        self._send_packet(eio_sid, self.packet_class(packet.CONNECT, {"sid": sid}, namespace=namespace))
        manager.connect(sid, namespace)
    fail_reason = exceptions.ConnectionRefusedError().error_args
    try:
        if data:
            success = self._trigger_event("connect", namespace, sid, self.environ[eio_sid], data)
        else:
            try:
                success = self._trigger_event("connect", namespace, sid, self.environ[eio_sid], None)
            except TypeError as exc:
                try:
                    success = self._trigger_event("connect", namespace, sid, self.environ[eio_sid])
                except TypeError:
                    raise exc from None
    except exceptions.ConnectionRefusedError as exc:
        fail_reason = exc.error_args
        success = False
    except ConnectionRefusedError:
        fail_reason = {"message": "Connection refused by server"}
        success = False

    if success is False:
        if restore is not None:  # recovery: the session stays in Redis, for a connection that is accepted
            manager.gated.discard((namespace, sid))
            self.environ[eio_sid].get(RECOVERED_KEY, set()).discard(namespace)
        if self.always_connect:
            manager.pre_disconnect(sid, namespace)
            self._send_packet(eio_sid, self.packet_class(packet.DISCONNECT, data=fail_reason, namespace=namespace))
        else:
            self._send_packet(eio_sid, self.packet_class(packet.CONNECT_ERROR, data=fail_reason, namespace=namespace))
        manager.disconnect(sid, namespace, ignore_queue=True)
    elif not self.always_connect:
        if restore is not None and not manager.finish_restore(eio_sid, restore):  # recovery
            # claimed by another connection meanwhile: this one closes, and its client's next try is a new session
            self.environ[eio_sid].get(RECOVERED_KEY, set()).discard(namespace)
            manager.disconnect(sid, namespace, ignore_queue=True)
            self.eio.disconnect(eio_sid)
            return
        pid = restore.pid if restore is not None else secrets.token_urlsafe(16)  # recovery
        self._send_packet(eio_sid, self.packet_class(packet.CONNECT, {"sid": sid, "pid": pid}, namespace=namespace))
        manager.connect(sid, namespace)
        manager.track(sid, namespace, pid)  # recovery
