"""The Redis message queue, made to ride out Redis outages.

`connect(settings)` is what create_app() passes to Flask-SocketIO as `client_manager` (None without
REDIS_URL: one process, no queue). It first waits up to REDIS_WAIT_SECONDS for Redis, logging what it
waits for, then starts anyway: an instance never crash-loops because Redis is late or gone.

The manager is `QueueManager` (deployment/operations/queue_manager.py), a backend on python-socketio's public
pub/sub base (`socketio.PubSubManager`: it implements `_publish` and `_listen`, as python-socketio's own Redis,
Kafka and Kombu managers do). It replaces nothing of python-socketio, so it is not pinned: it runs with whatever
python-socketio is installed. What it does about Redis being away or hung:

- Emits are always delivered to this instance's own clients first (python-socketio's base does that), then
  published for the other instances. While Redis is unreachable the publish is dropped: one WARNING when
  it starts ("message queue unreachable ..."), one every LOG_EVERY seconds with the count of dropped
  messages, one when it is back. python-socketio's RedisManager logs two ERROR lines per emit instead.
- A publish waits at most SOCKET_TIMEOUT seconds (python-socketio's RedisManager: twice redis-py's default
  socket timeout, 10s with redis-py 8, and on every emit while Redis hangs), and while Redis is known to be
  down only one publish per RETRY_SECONDS tries again: the others are dropped at once instead of each paying a
  timeout. tests/deployment/test_queue_manager.py and test_faults.py hang Redis (SIGSTOP) to show it.
  "Dropped" means not confirmed: a PUBLISH that timed out on a hung Redis was already written, and Redis may
  still run it (and deliver it late) when it goes on.
- The subscriber reconnects every RETRY_SECONDS at most (python-socketio backs off up to 60s), so
  cross-instance delivery resumes within about a second of Redis coming back, with one log line each way.
- TCP keepalive on both connections, so a Redis that vanished without closing them is noticed.

`redis_client(url, **options)` makes every Redis client of the app (queue, /readyz, sign-in, presence, emit):
redis:// and rediss:// through redis.Redis.from_url, redis+sentinel://host:port,.../db/service through
redis.sentinel.Sentinel(...).master_for(service), which finds the current primary again after a failover.

With CONNECTION_STATE_RECOVERY=true the manager is deployment/operations/recovery.py's RecoveryManager (the same
queue, with the recovery stream); that one does replace internals of python-socketio, so with a version it was
not verified against, or without REDIS_URL, `connect()` refuses the start (ConfigError, one line).
"""

from __future__ import annotations

import socket
import time
from urllib.parse import unquote

import redis
from redis.sentinel import Sentinel
from socketio.redis_manager import parse_redis_sentinel_url

from deployment.operations import recovery
from deployment.operations.queue_manager import LOG_EVERY, RETRY_SECONDS, SOCKET_TIMEOUT, QueueManager, describe, log
from deployment.settings import mask_url_password

__all__ = [
    "LOG_EVERY",
    "RETRY_SECONDS",
    "SOCKET_TIMEOUT",
    "QueueManager",
    "close_client",
    "connect",
    "describe",
    "queue_manager",
    "redis_client",
]

KEEPALIVE = {socket.TCP_KEEPIDLE: 10, socket.TCP_KEEPINTVL: 5, socket.TCP_KEEPCNT: 3}


SENTINEL_SCHEME = "redis+sentinel://"


def parse_sentinel_url(url):
    """redis+sentinel://[user:password@]host1:port1,host2:port2/db/service_name -> (sentinels, service,
    connection kwargs). python-socketio's parser when it has one (the same reading as its RedisManager), with
    the user name and password percent-decoded like redis-py's from_url does for redis:// URLs."""
    sentinels, service, kwargs = parse_redis_sentinel_url(url)
    for key in ("username", "password"):
        if key in kwargs:
            kwargs[key] = unquote(kwargs[key])
    return sentinels, service, kwargs


def redis_client(url, **options):
    """A redis-py client for REDIS_URL: redis:// and rediss:// (redis.Redis.from_url), or
    redis+sentinel://[:password@]host1:port1,host2:port2/db/service_name (a client of the master that the
    sentinels name for `service_name`; it asks them again after a failover). Connect timeout SOCKET_TIMEOUT and
    TCP keepalive unless `options` say otherwise; `options` go to the Redis connections (for Sentinel: to the
    master's, and the sentinels get the same timeouts, never the password: that is the master's)."""
    options.setdefault("socket_connect_timeout", SOCKET_TIMEOUT)
    options.setdefault("socket_keepalive", True)
    options.setdefault("socket_keepalive_options", KEEPALIVE)
    if not url.startswith(SENTINEL_SCHEME):
        return redis.Redis.from_url(url, **options)
    sentinels, service, connection = parse_sentinel_url(url)
    if not service:
        raise ValueError("a redis+sentinel:// URL needs the service name: redis+sentinel://host:port/db/service_name")
    connection.update(options)
    sentinel_kwargs = {key: value for key, value in options.items() if key.startswith("socket_")}
    # a sentinel query is always bounded, also for the subscriber's connection (which has no socket_timeout)
    sentinel_kwargs.setdefault("socket_timeout", options["socket_connect_timeout"] or SOCKET_TIMEOUT)
    return Sentinel(sentinels, sentinel_kwargs=sentinel_kwargs, **connection).master_for(service)


def close_client(client):
    """Closes a client from redis_client(), and for Sentinel also its connections to the sentinels."""
    try:
        client.close()
    finally:
        sentinel = getattr(client.connection_pool, "sentinel_manager", None)
        if sentinel is not None:
            sentinel.close()


def wait_for_redis(url, seconds, display_url):
    """Waits until Redis answers PING, at most `seconds`; True if it did. Logs while waiting."""
    started = time.monotonic()
    client = redis_client(url, socket_timeout=SOCKET_TIMEOUT)
    last_log = None
    try:
        while True:
            try:
                client.ping()
            except Exception as exc:  # noqa: BLE001 - any failure means "not yet"
                waited = time.monotonic() - started
                if waited >= seconds:
                    log.warning(
                        "message queue %s still unreachable after %.0fs (%s): starting anyway; emits reach this "
                        "instance's clients only until it is back",
                        display_url,
                        waited,
                        describe(exc),
                    )
                    return False
                if last_log is None or time.monotonic() - last_log >= 5:
                    log.warning(
                        "waiting for the message queue %s (%s); up to %.0fs more",
                        display_url,
                        describe(exc),
                        seconds - waited,
                    )
                    last_log = time.monotonic()
                time.sleep(min(0.5, max(0.0, seconds - waited)))
                continue
            if last_log is not None:
                log.info("message queue %s reachable after %.1fs", display_url, time.monotonic() - started)
            return True
    finally:
        close_client(client)


def connect(settings):
    """The client manager for create_app(): None without REDIS_URL, else a queue manager (after waiting for
    Redis up to REDIS_WAIT_SECONDS). ConfigError (one line) if CONNECTION_STATE_RECOVERY=true cannot run here."""
    recovery.check(settings)
    if not settings.redis_url:
        return None
    display_url = mask_url_password(settings.redis_url)
    if settings.redis_wait_seconds > 0:
        wait_for_redis(settings.redis_url, settings.redis_wait_seconds, display_url)
    recovery_window = settings.recovery_max_disconnection if settings.connection_state_recovery else None
    return queue_manager(
        settings.redis_url,
        channel=settings.message_queue_channel,
        display_url=display_url,
        recovery_window=recovery_window,
    )


def queue_manager(url, channel, display_url=None, recovery_window=None, **kwargs):
    """A QueueManager whose Redis clients come from redis_client(); with `recovery_window`
    (CONNECTION_STATE_RECOVERY) the RecoveryManager, or ConfigError if the installed libraries are not versions
    connection recovery was verified against. `kwargs`: the manager's own (write_only, json, ...)."""
    kwargs.update(channel=channel, display_url=display_url, connect=redis_client, close=close_client)
    if recovery_window is None:
        return QueueManager(url, **kwargs)
    recovery.require(url)
    return recovery.RecoveryManager(url, window=recovery_window, **kwargs)
