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

The server side, the session store included, is in deployment/patches/connection_recovery.py (it replaces
non-public methods of python-socketio, so it is pinned): with
another version the setting has no effect (one log line) and every connection is a new session.
"""

from __future__ import annotations

from flask import request

from deployment.patches import connection_recovery
from deployment.patches.connection_recovery import RECOVERED_KEY, STREAM_MAXLEN, log


def recovered():
    """Inside a Socket.IO handler (connect included): whether this socket came back by connection state recovery,
    with its id, rooms, session and missed packets (Node's `socket.recovered`)."""
    return request.namespace in request.environ.get(RECOVERED_KEY, ())


def install(socketio, settings):
    """Called by operations.install(): puts recovery on the server if the settings ask for it and the manager
    made by deployment/operations/message_queue.py supports it; else one log line says why it is off."""
    if not settings.connection_state_recovery:
        return False
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
