"""QueueManager: the Redis message queue's client manager, a python-socketio pub/sub backend made to ride out
Redis outages (deployment/operations/message_queue.py says what it does and makes it).

python-socketio's `PubSubManager` is the base of every backend it ships (Redis, Kafka, Kombu, ZeroMQ): it
delivers an emit to this instance's own clients, then hands it to `_publish(data)` for the other instances, and
its listener greenlet delivers whatever `_listen()` yields. A backend implements those two methods, and that is
all this class implements (plus `initialize()`, the public start of the listener): no method of python-socketio's
RedisManager is replaced, so it runs with any python-socketio version that keeps that contract, unpinned.

`_subscribe()` (each (re)subscription of the listener) and `on_subscribed()` (after it, before its first
message) are this class's own, for deployment/patches/socketio_hooks.py (it counts lost subscriptions) and
connection state recovery (deployment/operations/recovery.py).
"""

from __future__ import annotations

import logging
import time

import redis
import socketio

from deployment.settings import mask_url_password

log = logging.getLogger("realtime.queue")

SOCKET_TIMEOUT = 2.0  # seconds: connecting to Redis, and waiting for a PUBLISH reply
RETRY_SECONDS = 1.0  # while Redis is down: at most one reconnect attempt per this many seconds
LOG_EVERY = 10.0  # while Redis is down: one summary line per this many seconds

# a reply that did not come in time: the connection is not stale, Redis is slow or hung; no second wait
TIMEOUTS = (redis.TimeoutError, TimeoutError)


def describe(exc):
    return f"{type(exc).__name__}: {exc}".strip().rstrip(":")


def close_redis(client):
    client.close()


class QueueManager(socketio.PubSubManager):
    """A Redis pub/sub backend that degrades to "this instance only" while Redis is away or hung:

    - `_publish`: one PUBLISH, bounded by `socket_timeout`; a stale connection (closed by a restarted Redis) gets
      one retry on a new one, a timeout none. While Redis is known to be down only one publish per
      `retry_seconds` tries again; the others are dropped at once. One WARNING when publishes start failing, a
      summary every `log_every` seconds, one line when they succeed again. A dropped publish returns None (what
      deployment/operations/instrument.py counts as lost), a delivered one Redis' count of subscribers.
    - `_listen`: subscribes on its own connection, and after any failure subscribes again every
      `retry_seconds`, with one log line each way.

    `connect(url, **options)` makes a redis-py client and `close(client)` closes it (default:
    redis.Redis.from_url and client.close(); deployment/operations/message_queue.py passes its Sentinel-aware
    pair, with TCP keepalive). `write_only=True`: publishes only, no listener (the emit command).
    """

    name = "redis"
    socket_timeout = SOCKET_TIMEOUT
    retry_seconds = RETRY_SECONDS
    log_every = LOG_EVERY

    def __init__(
        self,
        url="redis://localhost:6379/0",
        channel="flask-socketio",
        write_only=False,
        logger=None,
        json=None,
        display_url=None,
        connect=None,
        close=None,
    ):
        super().__init__(channel=channel, write_only=write_only, logger=logger, json=json)
        self.redis_url = url
        self.display_url = display_url or mask_url_password(url)
        self.connect_redis = connect or redis.Redis.from_url
        self.close_redis = close or close_redis
        self.publisher = None  # client for PUBLISH; made again after a failure (a Sentinel one asks again)
        self.subscriber = None  # the client behind self.pubsub
        self.pubsub = None
        self.down_since = None  # monotonic time of the first failed publish of an outage; None while up
        self.next_try = 0.0  # while down: publishes before this time are dropped without trying
        self.dropped = 0  # publishes dropped, ever
        self.dropped_before = 0  # ... when the current outage started
        self.last_report = 0.0

    def initialize(self):
        """The server's first connection: python-socketio starts the listener greenlet (unless write_only)."""
        async_mode = self.server.async_mode
        patched = True
        if async_mode == "eventlet":
            from eventlet.patcher import is_monkey_patched

            patched = is_monkey_patched("socket")
        elif "gevent" in async_mode:
            from gevent.monkey import is_module_patched

            patched = is_module_patched("socket")
        if not patched:  # redis-py's blocking sockets would stop every greenlet
            raise RuntimeError(f"the Redis message queue needs a monkey-patched socket module with {async_mode}")
        super().initialize()

    # --- publishing ---------------------------------------------------------------------------------
    def known_down(self):
        """True while publishes are dropped without trying (Redis failed and RETRY_SECONDS have not passed)."""
        return self.down_since is not None and time.monotonic() < self.next_try

    def _publish(self, data):
        if self.known_down():
            return self._dropped()
        message = self.json.dumps(data)
        error = None
        for _attempt in range(2):  # a stale connection (e.g. Redis restarted) gets one retry on a new one
            try:
                if self.publisher is None:
                    self.publisher = self.connect_redis(self.redis_url, socket_timeout=self.socket_timeout)
                result = self.publisher.publish(self.channel, message)
            except Exception as exc:  # noqa: BLE001 - redis errors, OSError, timeouts
                error = exc
                self._close_publisher()
                if isinstance(exc, TIMEOUTS):  # slow or hung, not stale: no second wait
                    break
            else:
                self.reachable()
                return result
        self.unreachable(error)
        return self._dropped()

    def _close_publisher(self):
        publisher, self.publisher = self.publisher, None
        if publisher is not None:
            try:
                self.close_redis(publisher)
            except Exception:  # noqa: BLE001 - it failed already
                pass

    def unreachable(self, error):
        """A write to Redis failed: the next RETRY_SECONDS of publishes are dropped; one WARNING per outage."""
        now = time.monotonic()
        self.next_try = now + self.retry_seconds
        if self.down_since is None:
            self.down_since = self.last_report = now
            self.dropped_before = self.dropped
            log.warning(
                "message queue %s unreachable (%s): emits reach this instance's clients only; messages for "
                "other instances are dropped until it is back",
                self.display_url,
                describe(error),
            )

    def reachable(self):
        """A write to Redis succeeded: one line if it ends an outage."""
        if self.down_since is not None:
            log.warning(
                "message queue %s reachable again after %.1fs: %d messages for other instances were dropped meanwhile",
                self.display_url,
                time.monotonic() - self.down_since,
                self.dropped - self.dropped_before,
            )
            self.down_since = None

    def _dropped(self):
        self.dropped += 1
        now = time.monotonic()
        if self.down_since is not None and now - self.last_report >= self.log_every:
            log.warning(
                "message queue %s still unreachable after %.0fs: %d messages for other instances dropped",
                self.display_url,
                now - self.down_since,
                self.dropped - self.dropped_before,
            )
            self.last_report = now
        return None

    # --- subscribing --------------------------------------------------------------------------------
    def _subscribe(self):
        """Subscribes the listener on a new connection (the old one, if any, is closed)."""
        self._close_subscriber()
        self.subscriber = self.connect_redis(self.redis_url, socket_timeout=self.socket_timeout)
        self.pubsub = self.subscriber.pubsub(ignore_subscribe_messages=True)
        self.pubsub.subscribe(self.channel)

    def on_subscribed(self):
        """Called in the listener after each subscription, before its first message (for subclasses)."""

    def _close_subscriber(self):
        pubsub, subscriber, self.pubsub, self.subscriber = self.pubsub, self.subscriber, None, None
        for close in (pubsub and pubsub.close, subscriber and (lambda: self.close_redis(subscriber))):
            if close:
                try:
                    close()
                except Exception:  # noqa: BLE001 - the old connection is gone anyway
                    pass

    def _listen(self):
        """The messages of the channel, for python-socketio's listener; never ends: after a failure it subscribes
        again every RETRY_SECONDS (a blocking read waits for messages as long as it takes, so an idle queue
        costs nothing; TCP keepalive notices a Redis that vanished without closing the connection)."""
        channel = self.channel.encode()
        lost_since = None
        while True:
            try:
                self._subscribe()
                if lost_since is not None:
                    log.warning(
                        "message queue %s: subscribed again after %.1fs; messages from other instances arrive again",
                        self.display_url,
                        time.monotonic() - lost_since,
                    )
                    lost_since = None
                self.on_subscribed()
                for message in self.pubsub.listen():
                    if message.get("type") == "message" and message.get("channel") == channel:
                        yield message["data"]
                log.debug("message queue %s: subscription ended; subscribing again", self.display_url)
            except Exception as exc:  # noqa: BLE001 - any failure: subscribe again
                if lost_since is None:
                    lost_since = time.monotonic()
                    log.warning(
                        "message queue %s: subscription lost (%s); messages from other instances are "
                        "not received until it is back; retrying every %.0fs",
                        self.display_url,
                        describe(exc),
                        self.retry_seconds,
                    )
                else:
                    log.debug("message queue %s: still unreachable (%s)", self.display_url, describe(exc))
                self.server.sleep(self.retry_seconds)
