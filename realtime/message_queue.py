"""The Redis message queue, made to ride out Redis outages.

`connect(settings)` is what create_app() passes to Flask-SocketIO as `client_manager` (None without
REDIS_URL: one process, no queue). It first waits up to REDIS_WAIT_SECONDS for Redis, logging what it
waits for, then starts anyway: an instance never crash-loops because Redis is late or gone.

`QueueManager` is python-socketio's RedisManager with four changes, all about Redis being away:

- Emits are always delivered to this instance's own clients first (python-socketio does that), then
  published for the other instances. While Redis is unreachable the publish is dropped: one WARNING when
  it starts ("message queue unreachable ..."), one every LOG_EVERY seconds with the count of dropped
  messages, one when it is back. python-socketio logs two ERROR lines per emit instead, without the reason.
- A publish waits at most SOCKET_TIMEOUT seconds (python-socketio: forever, if Redis hangs), and while
  Redis is known to be down only one publish per RETRY_SECONDS tries to reconnect: the others are dropped
  at once instead of each paying a connect timeout.
- The subscriber reconnects every RETRY_SECONDS at most (python-socketio backs off up to 60s), so
  cross-instance delivery resumes within about a second of Redis coming back, with one log line each way.
- TCP keepalive on both connections, so a Redis that vanished without closing them is noticed.

It overrides private methods of python-socketio 5.18's RedisManager (`_redis_connect`, `_publish`,
`_redis_listen_with_retries`); requirements.txt pins that version; re-run tests/test_faults.py when upgrading.
"""

from __future__ import annotations

import logging
import socket
import time

import redis
import socketio

log = logging.getLogger("realtime.queue")

SOCKET_TIMEOUT = 2.0  # seconds: connecting to Redis, and waiting for a PUBLISH reply
RETRY_SECONDS = 1.0  # while Redis is down: at most one reconnect attempt per this many seconds
LOG_EVERY = 10.0  # while Redis is down: one summary line per this many seconds
KEEPALIVE = {socket.TCP_KEEPIDLE: 10, socket.TCP_KEEPINTVL: 5, socket.TCP_KEEPCNT: 3}


def redis_client(url, **options):
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=SOCKET_TIMEOUT,
        socket_keepalive=True,
        socket_keepalive_options=KEEPALIVE,
        **options,
    )


def describe(exc):
    return f"{type(exc).__name__}: {exc}".strip().rstrip(":")


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
        client.close()


def connect(settings):
    """The client manager for create_app(): None without REDIS_URL, else a QueueManager (after waiting for
    Redis up to REDIS_WAIT_SECONDS)."""
    if not settings.redis_url:
        return None
    from realtime.config import mask_url_password

    display_url = mask_url_password(settings.redis_url)
    if settings.redis_wait_seconds > 0:
        wait_for_redis(settings.redis_url, settings.redis_wait_seconds, display_url)
    return QueueManager(settings.redis_url, channel=settings.message_queue_channel, display_url=display_url)


class QueueManager(socketio.RedisManager):
    """RedisManager that degrades to "this instance only" while Redis is away; see the module docstring."""

    def __init__(self, url, channel="flask-socketio", display_url=None, **kwargs):
        super().__init__(url, channel=channel, **kwargs)
        self.display_url = display_url or url
        self.publish_down_since = None  # monotonic time of the first failed publish of an outage
        self.publish_next_try = 0.0
        self.dropped = 0
        self.dropped_reported = 0
        self.last_report = 0.0

    # --- connections --------------------------------------------------------------------------------
    def _redis_connect(self):
        """Publisher connection: bounded waits. (The subscriber has its own, see _subscribe.)"""
        if self.redis is not None:
            self.redis.close()
        self.redis = redis_client(self.redis_url, socket_timeout=SOCKET_TIMEOUT)
        self.connected = True

    def _subscribe(self):
        if self.pubsub is not None:
            try:
                self.pubsub.close()
            except Exception:  # noqa: BLE001 - the old connection is gone anyway
                pass
        # no socket_timeout: a subscriber is idle until someone emits
        self.pubsub = redis_client(self.redis_url).pubsub(ignore_subscribe_messages=True)
        self.pubsub.subscribe(self.channel)

    # --- publishing ---------------------------------------------------------------------------------
    def _publish(self, data):
        message = self.json.dumps(data)
        now = time.monotonic()
        if self.publish_down_since is not None and now < self.publish_next_try:
            return self._dropped(None)
        for _attempt in range(2):  # a stale connection gets one fresh retry
            try:
                if not self.connected:
                    self._redis_connect()
                result = self.redis.publish(self.channel, message)
            except Exception as exc:  # noqa: BLE001 - redis errors, OSError, timeouts
                self.connected = False
                error = exc
                continue
            self._publish_ok()
            return result
        self.publish_next_try = time.monotonic() + RETRY_SECONDS
        return self._dropped(error)

    def _dropped(self, error):
        now = time.monotonic()
        self.dropped += 1
        if self.publish_down_since is None:
            self.publish_down_since = self.last_report = now
            self.dropped_reported = self.dropped - 1
            log.warning(
                "message queue %s unreachable (%s): emits reach this instance's clients only; messages for "
                "other instances are dropped until it is back",
                self.display_url,
                describe(error),
            )
        elif now - self.last_report >= LOG_EVERY:
            log.warning(
                "message queue %s still unreachable after %.0fs: %d messages for other instances dropped",
                self.display_url,
                now - self.publish_down_since,
                self.dropped - self.dropped_reported,
            )
            self.last_report = now
        return None

    def _publish_ok(self):
        if self.publish_down_since is not None:
            log.warning(
                "message queue %s reachable again after %.1fs: %d messages for other instances were dropped meanwhile",
                self.display_url,
                time.monotonic() - self.publish_down_since,
                self.dropped - self.dropped_reported,
            )
            self.publish_down_since = None

    # --- subscribing --------------------------------------------------------------------------------
    def _redis_listen_with_retries(self):
        down_since = None
        while True:
            try:
                self._subscribe()
                if down_since is not None:
                    log.warning(
                        "message queue %s: subscribed again after %.1fs; messages from other instances arrive again",
                        self.display_url,
                        time.monotonic() - down_since,
                    )
                    down_since = None
                yield from self.pubsub.listen()
            except Exception as exc:  # noqa: BLE001 - any failure: reconnect
                if down_since is None:
                    down_since = time.monotonic()
                    log.warning(
                        "message queue %s: subscription lost (%s); messages from other instances are "
                        "not received until it is back; retrying every %.0fs",
                        self.display_url,
                        describe(exc),
                        RETRY_SECONDS,
                    )
                else:
                    log.debug("message queue %s: still unreachable (%s)", self.display_url, describe(exc))
                time.sleep(RETRY_SECONDS)
