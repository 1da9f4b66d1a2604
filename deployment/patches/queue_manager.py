"""python-socketio's RedisManager, made to ride out Redis outages (deployment/operations/message_queue.py says how).

It overrides non-public methods of python-socketio's RedisManager (`_redis_connect`, `_publish`,
`_redis_listen_with_retries`), so deployment/operations/message_queue.py uses it only with a python-socketio version it
was verified against; with another, python-socketio's own RedisManager runs (one log line): the queue works,
but an outage costs two ERROR lines per emit and publishes can wait on a hung Redis.
tests/deployment/test_faults.py (Redis stopped, hung and late) is what verifies a new version.
"""

from __future__ import annotations

import logging
import time

import redis
import socketio

log = logging.getLogger("realtime.queue")

SOCKET_TIMEOUT = 2.0  # seconds: connecting to Redis, and waiting for a PUBLISH reply
RETRY_SECONDS = 1.0  # while Redis is down: at most one reconnect attempt per this many seconds
LOG_EVERY = 10.0  # while Redis is down: one summary line per this many seconds


def describe(exc):
    return f"{type(exc).__name__}: {exc}".strip().rstrip(":")


def close_redis(client):
    client.close()


VERIFIED = {"python-socketio": ("5.18.1",)}
REPLACES = ["manager._redis_connect", "manager._publish", "manager._redis_listen_with_retries"]
SERVES = "Redis outages: emits stay local, bounded waits, one log line each way (operations/message_queue.py)"
PROVEN_BY = "tests/deployment/test_faults.py"


class QueueManager(socketio.RedisManager):
    """RedisManager that degrades to "this instance only" while Redis is away; see the module docstring."""

    def __init__(self, url, channel="flask-socketio", display_url=None, connect=None, close=None, **kwargs):
        """connect(url, **options) makes a redis-py client, close(client) closes it (default: redis.Redis.from_url
        and client.close(); deployment/operations/message_queue.py passes its Sentinel-aware pair)."""
        self.connect_redis = connect or redis.Redis.from_url
        self.close_redis = close or close_redis
        super().__init__(url, channel=channel, **kwargs)
        self.display_url = display_url or url
        self.subscriber = None  # the client behind self.pubsub
        self.publish_down_since = None  # monotonic time of the first failed publish of an outage
        self.publish_next_try = 0.0
        self.dropped = 0
        self.dropped_reported = 0
        self.last_report = 0.0

    # --- connections --------------------------------------------------------------------------------
    def _redis_connect(self):
        """Publisher connection: bounded waits. (The subscriber has its own, see _subscribe.)"""
        if self.redis is not None:
            self.close_redis(self.redis)
        self.redis = self.connect_redis(self.redis_url, socket_timeout=SOCKET_TIMEOUT)
        self.connected = True

    def _subscribe(self):
        if self.pubsub is not None:
            try:
                self.pubsub.close()
                self.close_redis(self.subscriber)
            except Exception:  # noqa: BLE001 - the old connection is gone anyway
                pass
        # no socket_timeout: a subscriber is idle until someone emits
        self.subscriber = self.connect_redis(self.redis_url)
        self.pubsub = self.subscriber.pubsub(ignore_subscribe_messages=True)
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
