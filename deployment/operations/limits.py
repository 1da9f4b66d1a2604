"""Per-connection limits: one client must not hurt the other clients of its process.

`install(socketio, settings)` (called by create_app after `socketio.init_app`) adds:

- **A packet guard** around python-socketio's Engine.IO `message` handler (python-engineio's documented
  `on("message")` hook), so every Socket.IO packet of every namespace and handler passes through it:
  - **Rate limit**: a token bucket per connection, `EVENT_RATE` packets per second with bursts of
    `EVENT_BURST`, checked before the packet is even parsed. A packet over the limit is dropped; if it asked
    for an ack, the ack is `{"error": "rate limited: ..."}`, otherwise the client gets an `error` event (at
    most one per second). A client with more than `EVENT_FLOOD_DISCONNECT` packets refused within 10
    seconds is disconnected. `EVENT_RATE=0` turns the limit off.
  - **Malformed packets** (not Socket.IO, bad JSON, JSON nested too deep, a binary placeholder that points
    nowhere, ...): python-socketio would log a full traceback for each one, so a client could flood the logs.
    Here each gets an `error` event `{"error": "malformed packet: ..."}` and a one-line warning (at most one
    per connection per 10 seconds); after `BAD_PACKET_LIMIT` of them the client is disconnected.
- **A room cap**: `MAX_ROOMS_PER_CLIENT` rooms per connection (its own sid room not counted), enforced
  in the client manager's `enter_room`, so every handler that calls `join_room` is covered. Over the cap,
  `join_room` raises `ClientError`, which the error handler below turns into the event's ack.
- **Unknown events**: a catch-all handler acks `{"error": "unknown event '<name>'"}`.
- **Handler exceptions**: the ack is `{"error": "internal error"}` (or the message of a `ClientError`);
  the traceback is logged, at most once per event name per 10 seconds (then one line with a count).
- **Engine.IO-level garbage** (an empty frame, a packet type that is not a digit or is unknown, JSON nested
  too deep): deployment/patches/engineio_packets.py turns it into a CLOSE of that client's session (it replaces
  python-engineio's `Packet.decode`, so it is pinned: with another python-engineio version it stays off and
  python-engineio's own handling runs). A POST to a session closed meanwhile gets 400, not a 500
  (`guard_requests`, on the public `handle_request`).
"""

from __future__ import annotations

import logging
import re
import time

from socketio import packet as sio_packet

from deployment.patches import engineio_packets

log = logging.getLogger("realtime.limits")  # the logger name users filter on, kept across the move

WINDOW = 10.0  # seconds: flood counting window, and log throttling
YIELD_EVERY = 50  # refused packets between two yields to the other greenlets
CLOSE_GRACE = 2.0  # seconds a disconnected client has to close by itself before the server closes
# type digit, optional "<attachments>-", optional "/namespace,", optional ack id
HEADER = re.compile(r"^(\d)(?:\d+-)?(/[^,]*,)?(\d+)?")


class ClientError(Exception):
    """An error caused by the client's request: its message is sent back as the event's ack."""


class TokenBucket:
    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate, burst):
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.stamp = time.monotonic()

    def take(self):
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class Connection:
    """What the guard remembers about one Engine.IO connection."""

    __slots__ = ("bucket", "refused", "window_start", "bad", "last_notice", "last_log", "closing")

    def __init__(self, settings):
        self.bucket = TokenBucket(settings.event_rate, settings.event_burst) if settings.event_rate > 0 else None
        self.refused = 0
        self.window_start = time.monotonic()
        self.bad = 0
        self.last_notice = 0.0
        self.last_log = 0.0
        self.closing = False


def peek(data):
    """(namespace, ack id) of an encoded Socket.IO packet, without parsing its JSON."""
    if not isinstance(data, str):
        return "/", None
    match = HEADER.match(data)
    if not match:
        return "/", None
    namespace = match.group(2)[:-1] if match.group(2) else "/"
    ack_id = int(match.group(3)) if match.group(3) and match.group(1) in "25" else None
    return namespace, ack_id


class PacketGuard:
    def __init__(self, server, settings):
        self.server = server
        self.settings = settings
        self.connections = {}
        self.handle_message = server.eio.handlers["message"]
        self.handle_disconnect = server.eio.handlers["disconnect"]

    def install(self):
        self.server.eio.on("message", self.on_message)
        self.server.eio.on("disconnect", self.on_disconnect)

    def on_disconnect(self, eio_sid, *args):
        self.connections.pop(eio_sid, None)
        return self.handle_disconnect(eio_sid, *args)

    def on_message(self, eio_sid, data):
        conn = self.connections.get(eio_sid)
        if conn is None:
            conn = self.connections[eio_sid] = Connection(self.settings)
        if conn.closing:
            return None
        if conn.bucket is not None and not conn.bucket.take():
            return self.refuse(eio_sid, conn, data)
        try:
            return self.handle_message(eio_sid, data)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError, RecursionError) as exc:
            return self.malformed(eio_sid, conn, data, exc)

    # --- over the rate limit ------------------------------------------------------------------------
    def refuse(self, eio_sid, conn, data):
        now = time.monotonic()
        if now - conn.window_start > WINDOW:
            conn.window_start, conn.refused = now, 0
        conn.refused += 1
        if conn.refused % YIELD_EVERY == 0:
            # a flood read from one buffer never yields: let the writer send the refusals, and others run
            self.server.sleep(0)
        limit = self.settings.event_flood_disconnect
        if limit and conn.refused > limit:
            log.warning(
                "disconnecting %s: %d packets over the rate limit (%g/s, burst %d) within %.0fs",
                eio_sid,
                conn.refused,
                self.settings.event_rate,
                self.settings.event_burst,
                WINDOW,
            )
            return self.disconnect(eio_sid, conn, "too many events")
        namespace, ack_id = peek(data)
        error = {"error": f"rate limited: at most {self.settings.event_rate:g} events per second"}
        if ack_id is not None:
            self.send(eio_sid, sio_packet.ACK, [error], namespace, ack_id)
        elif now - conn.last_notice >= 1:
            conn.last_notice = now
            self.send(eio_sid, sio_packet.EVENT, ["error", error], namespace)
        if now - conn.last_log >= WINDOW:
            conn.last_log = now
            log.info(
                "rate limiting %s (%g events/s, burst %d)", eio_sid, self.settings.event_rate, self.settings.event_burst
            )
        return None

    # --- malformed packets --------------------------------------------------------------------------
    def malformed(self, eio_sid, conn, data, exc):
        conn.bad += 1
        reason = "JSON nested too deep" if isinstance(exc, RecursionError) else (str(exc) or type(exc).__name__)
        reason = reason[:100]
        now = time.monotonic()
        if now - conn.last_log >= WINDOW:
            conn.last_log = now
            sample = data[:60] if isinstance(data, (str, bytes)) else type(data).__name__
            log.warning("malformed packet from %s (%d so far): %s; packet starts %r", eio_sid, conn.bad, reason, sample)
        if self.settings.bad_packet_limit and conn.bad >= self.settings.bad_packet_limit:
            log.warning("disconnecting %s: %d malformed packets", eio_sid, conn.bad)
            return self.disconnect(eio_sid, conn, "too many malformed packets")
        namespace, _ = peek(data)
        self.send(eio_sid, sio_packet.EVENT, ["error", {"error": f"malformed packet: {reason}"}], namespace)
        return None

    # --- helpers ------------------------------------------------------------------------------------
    def send(self, eio_sid, kind, data, namespace="/", ack_id=None):
        pkt = self.server.packet_class(kind, data=data, namespace=namespace, id=ack_id)
        try:
            self.server.eio.send(eio_sid, pkt.encode())
        except Exception:  # noqa: BLE001 - the client is gone: nothing to tell it
            pass

    def disconnect(self, eio_sid, conn, reason):
        """Socket.IO DISCONNECT for each of its namespaces (clients do not reconnect after it), then close."""
        conn.closing = True
        for namespace in list(self.server.manager.get_namespaces()):
            if self.server.manager.sid_from_eio_sid(eio_sid, namespace):
                self.send(eio_sid, sio_packet.EVENT, ["error", {"error": f"disconnected: {reason}"}], namespace)
                self.send(eio_sid, sio_packet.DISCONNECT, None, namespace)
        # The client closes on DISCONNECT. Closing here at once, with its flood still unread, would reset the
        # connection (TCP RST) and lose what was queued for it: its packets are dropped (closing) until then.
        self.server.start_background_task(self.close_later, eio_sid)
        return None

    def close_later(self, eio_sid):
        self.server.sleep(CLOSE_GRACE)
        sock = self.server.eio.sockets.get(eio_sid)
        if sock is not None and not sock.closed:
            # not eio.disconnect(): it waits until the client has read its queue, which a flooder may never do
            sock.close(wait=False)


class RoomCap:
    """Wraps the client manager's enter_room; counts a connection's rooms, exactly when near the cap."""

    def __init__(self, manager, cap):
        self.manager = manager
        self.cap = cap
        self.enter_room = manager.enter_room

    def install(self):
        self.manager.enter_room = self.checked_enter_room

    def checked_enter_room(self, sid, namespace, room, eio_sid=None):
        if room is not None and room != sid and self.manager.is_connected(sid, namespace):
            rooms = self.manager.rooms.get(namespace or "/", {})
            if room not in rooms or sid not in rooms[room]:
                # own sid room excluded; get_rooms() is a scan, fine for one join at a time
                joined = len(self.manager.get_rooms(sid, namespace or "/")) - 1
                if joined >= self.cap:
                    raise ClientError(f"room limit reached: at most {self.cap} rooms per connection")
        return self.enter_room(sid, namespace, room, eio_sid=eio_sid)


class ErrorHandler:
    """Flask-SocketIO's default exception handler: the return value becomes the event's ack."""

    def __init__(self, fallback=None):
        self.fallback = fallback
        self.last_traceback = {}
        self.suppressed = {}

    def __call__(self, exc):
        from flask import request

        event = (getattr(request, "event", None) or {}).get("message", "?")
        if isinstance(exc, ClientError):
            # a connect handler that failed must not let the client in: False refuses the connection
            return False if event == "connect" else {"error": str(exc)}
        if self.fallback is not None:
            return self.fallback(exc)
        now = time.monotonic()
        if now - self.last_traceback.get(event, -WINDOW) >= WINDOW:
            self.last_traceback[event] = now
            more = self.suppressed.pop(event, 0)
            log.error(
                "handler for %r raised %s%s",
                event,
                type(exc).__name__,
                f" ({more} more since the last traceback)" if more else "",
                exc_info=exc,
            )
        else:
            self.suppressed[event] = self.suppressed.get(event, 0) + 1
        return False if event == "connect" else {"error": "internal error"}


def guard_requests(eio):
    """A POST to an Engine.IO session closed meanwhile makes python-engineio raise KeyError (a 500 and a
    traceback): it gets a 400 instead. Wraps the public `handle_request` of this server object."""
    original = eio.handle_request

    def handle_request(environ, start_response):
        try:
            return original(environ, start_response)
        except KeyError as exc:  # _get_socket(): "Session is disconnected" / "Session not found"
            start_response("400 BAD REQUEST", [("Content-Type", "text/plain")])
            return [f'"{exc.args[0] if exc.args else "Invalid session"}"'.encode()]

    eio.handle_request = handle_request


def unknown_event(event, *args):
    return {"error": f"unknown event {str(event)[:64]!r}"}


def install(socketio, settings):
    """Adds the limits above to the SocketIO object's current server (call after init_app)."""
    server = socketio.server
    engineio_packets.install()  # Engine.IO garbage closes its session (deployment/patches/engineio_packets.py, pinned)
    guard_requests(server.eio)
    PacketGuard(server, settings).install()
    if settings.max_rooms_per_client:
        RoomCap(server.manager, settings.max_rooms_per_client).install()
    if not isinstance(socketio.default_exception_handler, ErrorHandler):
        socketio.on_error_default(ErrorHandler(fallback=socketio.default_exception_handler))
    # on every namespace with decorated handlers; not where a class-based Namespace serves (it would shadow it)
    # ("*", the catch-all namespace, is no namespace of its own: a catch-all there would shadow class-based ones)
    for namespace in [name for name in server.handlers if name != "*"] or ["/"]:
        if "*" not in server.handlers.get(namespace, {}) and namespace not in server.namespace_handlers:
            socketio.on("*", namespace=namespace)(unknown_event)
