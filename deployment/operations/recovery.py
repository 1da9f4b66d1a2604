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
non-public methods of python-socketio and uses Flask-SocketIO's session class, so it is pinned);
`RecoveryManager` here is its manager part on the queue's manager. The setting either runs or stops the start:
with a python-socketio or Flask-SocketIO version it was not verified against, or without REDIS_URL,
`check(settings)` (deployment/operations/message_queue.py's connect(), in init_app) raises a ConfigError whose one
line names the setting, the versions found and what to do.
"""

from __future__ import annotations

from flask import request

from deployment.operations.queue_manager import QueueManager
from deployment.patches import connection_recovery
from deployment.patches.connection_recovery import RECOVERED_KEY, STREAM_MAXLEN, RecoveryMixin, log
from deployment.settings import ConfigError


class RecoveryManager(RecoveryMixin, QueueManager):
    """The Redis queue's manager (deployment/operations/queue_manager.py) with connection state recovery:
    emits through the recovery stream, a session record per socket. `window`: RECOVERY_MAX_DISCONNECTION."""


def require(redis_url):
    """ConfigError (one line: the setting, the versions found, what to do) unless connection state recovery can
    run: it needs a Redis URL and library versions connection recovery was verified against."""
    refusal = connection_recovery.refusal(redis_url)
    if refusal:
        raise ConfigError(refusal)


def check(settings):
    """require(REDIS_URL) if CONNECTION_STATE_RECOVERY=true."""
    if settings.connection_state_recovery:
        require(settings.redis_url)


def recovered():
    """Inside a Socket.IO handler (connect included): whether this socket came back by connection state recovery,
    with its id, rooms, session and missed packets (Node's `socket.recovered`)."""
    return request.namespace in request.environ.get(RECOVERED_KEY, ())


def install(socketio, settings):
    """Called by operations.install(): puts recovery on the server if the settings ask for it. The manager must
    be the RecoveryManager deployment/operations/message_queue.py's connect() made (it ran check()); else
    ConfigError: a setting that asks for recovery never runs without it."""
    if not settings.connection_state_recovery:
        return False
    check(settings)
    manager = socketio.server.manager
    if not isinstance(manager, RecoveryMixin):
        raise ConfigError(
            f"CONNECTION_STATE_RECOVERY=true needs the message queue's manager made by deployment (found "
            f"{type(manager).__name__}): pass client_manager=deployment.operations.message_queue.connect(settings) "
            "to SocketIO.init_app, or set CONNECTION_STATE_RECOVERY=false"
        )
    connection_recovery.install(socketio.server)
    log.info(
        "connection state recovery on: sessions kept %.0fs after a cut, up to %d packets for replay",
        settings.recovery_max_disconnection,
        STREAM_MAXLEN,
    )
    return True
