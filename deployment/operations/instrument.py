"""Counts and logs what happens on the Socket.IO server: feeds deployment/operations/metrics.py and the
`realtime.socket` log lines of deployment/operations/logs.py.

python-socketio has no middleware for events, so install() hooks into a few methods of this process's server
objects, the way python-socketio's own admin instrumentation (`Server.instrument()`) does:

    socketio.Server._trigger_event   every handler call: connect, disconnect, events (count, latency, errors)
    socketio.Server.emit             emit() calls made by this instance (public: wrapped here)
    engineio.Server._bad_request     every Engine.IO 400 (unknown session, bad origin, ...)
    <manager>._publish, _subscribe   message-queue publishes dropped, subscriptions lost (see _queue_hooks)
and a logging filter on python-socketio's logger for the other message-queue errors it reports.

The non-public ones are replaced by deployment/patches/socketio_hooks.py, pinned to the python-socketio/python-engineio
versions it was verified against: this module only passes in what to count and log. With another version
those hooks stay off (one log line says so) and what they feed is neither counted nor logged (events
received, handler latency and errors, connect/disconnect/refused lines, Engine.IO 400s, lost publishes);
emitted events, the connected-clients gauge, the message-queue errors python-socketio logs, and /metrics
itself keep working.
Per event the cost is two clock reads, a few dict look-ups and two metric updates.
"""

from __future__ import annotations

import logging
from time import perf_counter

from socketio import exceptions as sio_exceptions

from deployment.operations import logs, metrics
from deployment.patches import socketio_hooks

REFUSALS = (sio_exceptions.ConnectionRefusedError, ConnectionRefusedError)
LIFECYCLE = ("connect", "disconnect")

# Engine.IO's 400 messages (python-engineio server.py) -> a bounded label
BAD_REQUEST_REASONS = {
    None: "bad_request",
    "Not an accepted origin.": "bad_origin",
    "Invalid transport": "bad_transport",
    "Invalid JSONP index number": "bad_jsonp",
    "Invalid websocket upgrade": "bad_upgrade",
    "Not connected": "not_connected",
    "Unexpected HTTP request": "unexpected_http",
}


def bad_request_reason(message):
    if message in BAD_REQUEST_REASONS:
        return BAD_REQUEST_REASONS[message]
    if isinstance(message, str):
        if message.startswith("Invalid session"):
            return "invalid_session"
        if message.startswith("The client is using an unsupported version"):
            return "unsupported_version"
    return "other"


def queue_operation(message):
    """python-socketio's message-queue error messages (redis_manager.py, pubsub_manager.py) -> a label.
    A lost publish is counted where it happens instead (see _queue_hooks), whichever manager logs it."""
    if "publish" in message:
        return None if "giving up" in message else "publish_retry"
    if "receive" in message:
        return "receive"
    if "pubsub" in message:
        return "listener"
    return None


class QueueErrorCounter(logging.Filter):
    """Counts the message queue's ERROR records on python-socketio's logger; lets every record through."""

    def filter(self, record):
        if record.levelno >= logging.ERROR and isinstance(record.msg, str):
            operation = queue_operation(record.msg)
            if operation:
                metrics.MESSAGE_QUEUE_ERRORS.labels(operation).inc()
        return True


def install(socketio, app):
    """Instruments the python-socketio server that socketio.init_app(app) just made (once per server)."""
    server = socketio.server
    if getattr(server, "_realtime_instrumented", False):
        return
    server._realtime_instrumented = True
    metrics.set_instance(app.config["SETTINGS"].instance_name)
    metrics.CONNECTED.engineio_server = server.eio
    _wrap_emit(server)
    publish, subscribe = _queue_hooks()
    socketio_hooks.install(
        server,
        trigger_event=_trigger_event_hook(server),
        bad_request=_count_bad_request,
        publish=publish,
        subscribe=subscribe,
    )
    if not any(isinstance(f, QueueErrorCounter) for f in server.logger.filters):
        server.logger.addFilter(QueueErrorCounter())
    # every series known now starts at 0, so rate() and alerts work before the first occurrence
    for namespace, events in server.handlers.items():
        for event in events:
            if event != "*":
                metrics.event_metrics(namespace, event)
    for reason in ("refused", "invalid_session", "unsupported_version", *BAD_REQUEST_REASONS.values()):
        metrics.HANDSHAKE_FAILURES.labels(reason)
    for operation in ("publish_retry", "publish_lost", "receive", "listener"):
        metrics.MESSAGE_QUEUE_ERRORS.labels(operation)


def _client_fields(server, sid, namespace, environ=None):
    if environ is None:
        try:
            environ = server.get_environ(sid, namespace)
        except (KeyError, TypeError):
            environ = None
    return {"sid": sid, "namespace": namespace, "client": logs.client_address(environ)}


def _transport(server, sid, namespace):
    try:
        return server.transport(sid, namespace)
    except (KeyError, TypeError):
        return "unknown"


def _trigger_event_hook(server):
    """What socketio_hooks runs around server._trigger_event: hook(original, event, namespace, *args)."""
    handlers = server.handlers
    namespace_handlers = server.namespace_handlers

    def known(event, namespace):
        if event in handlers.get(namespace, ()):
            return True
        handler = namespace_handlers.get(namespace)
        return handler is not None and hasattr(handler, f"on_{event}")

    def connect(original, namespace, sid, environ=None, *rest):
        latency = metrics.event_metrics(namespace, "connect")[1]
        start = perf_counter()
        try:
            result = original("connect", namespace, sid, environ, *rest)
        except REFUSALS as exc:
            refused(namespace, sid, environ, getattr(exc, "error_args", {}).get("message") or str(exc))
            raise
        except Exception:
            failed("connect", namespace, sid, environ)
            raise
        finally:
            latency.observe(perf_counter() - start)
        if result is False:
            refused(namespace, sid, environ, "connect handler returned False")
        else:
            logs.socket_event(
                "connect",
                transport=_transport(server, sid, namespace),
                **_client_fields(server, sid, namespace, environ),
            )
        return result

    def refused(namespace, sid, environ, reason):
        metrics.HANDSHAKE_FAILURES.labels("refused").inc()
        logs.socket_event("refused", logging.WARNING, reason=reason, **_client_fields(server, sid, namespace, environ))

    def failed(event, namespace, sid, environ=None):
        """A handler raised: count it, log it with its traceback (the exception then goes on as before)."""
        label = event if event in LIFECYCLE or known(event, namespace) else "_unknown"
        metrics.event_metrics(namespace, label)[2].inc()
        fields = _client_fields(server, sid, namespace, environ)
        logs.socket_event("handler_error", logging.ERROR, exc_info=True, handler=event[:100], **fields)

    def disconnect(original, namespace, sid, *rest):
        fields = _client_fields(server, sid, namespace)  # before the handler: the environ goes with the client
        latency = metrics.event_metrics(namespace, "disconnect")[1]
        start = perf_counter()
        try:
            return original("disconnect", namespace, sid, *rest)
        except Exception:
            failed("disconnect", namespace, sid)
            raise
        finally:
            latency.observe(perf_counter() - start)
            logs.socket_event("disconnect", reason=str(rest[0]) if rest else "", **fields)

    def trigger_event(original, event, namespace, *args):
        if event == "connect":
            return connect(original, namespace, *args)
        if event == "disconnect":
            return disconnect(original, namespace, *args)
        received, latency, _errors = metrics.event_metrics(namespace, event if known(event, namespace) else "_unknown")
        received.inc()
        start = perf_counter()
        try:
            return original(event, namespace, *args)
        except Exception:
            failed(event, namespace, args[0] if args else "")
            raise
        finally:
            latency.observe(perf_counter() - start)

    return trigger_event


def _wrap_emit(server):
    original = server.emit

    def emit(event, *args, **kwargs):
        metrics.emitted(kwargs.get("namespace") or "/", event)
        return original(event, *args, **kwargs)

    server.emit = emit


def _count_bad_request(message=None):
    """Called by socketio_hooks before each Engine.IO 400 response."""
    metrics.HANDSHAKE_FAILURES.labels(bad_request_reason(message)).inc()


def _queue_hooks():
    """(publish, subscribe) hooks for socketio_hooks: message-queue failures that no log message has to tell.
    A publish that returns None was dropped (python-socketio's RedisManager gives up after a retry;
    deployment/operations/message_queue.py's QueueManager drops while Redis is away), and every subscription after the
    first one replaces a lost one (QueueManager's _subscribe). The in-process manager has neither method."""
    lost = metrics.MESSAGE_QUEUE_ERRORS.labels("publish_lost")
    resubscribed = metrics.MESSAGE_QUEUE_ERRORS.labels("receive")
    calls = {"subscribe": 0}

    def counted_publish(publish, data):
        result = publish(data)
        if result is None:  # redis PUBLISH answers the number of subscribers, an int
            lost.inc()
        return result

    def counted_subscribe():
        calls["subscribe"] += 1
        if calls["subscribe"] > 1:
            resubscribed.inc()

    return counted_publish, counted_subscribe
