"""Counts and logs what happens on the Socket.IO server: feeds deployment/operations/metrics.py and the
`realtime.socket` log lines of deployment/operations/logs.py; carries REQUIRE_LOGIN's gate
(deployment/operations/auth.py) to every connection. Through the libraries' public doors:

    every handler, as it is registered   python-socketio's `Server.on()` and `Server.register_namespace()` (which
                                         Flask-SocketIO's `on()`, `on_event()`, `event()` and `on_namespace()`
                                         call, before init_app through its replay of `socketio.handlers`): the
                                         handlers registered so far are wrapped, and those registered later as
                                         they come. A class-based namespace's handler is its public
                                         `trigger_event()`, wrapped on the instance.
    connect and disconnect               a namespace without a connect (disconnect) handler of its own gets the
                                         catch-all namespace's `"*"` one, which hands over to a class-based
                                         namespace if there is one, as python-socketio would: so every connection
                                         is logged and passes the login gate, whatever handlers exist.
    Server.emit                          emit() calls made by this instance
    Engine.IO's handle_request           every Engine.IO 400 answer (unknown session, bad origin, ...), read from
                                         the status and the body it answers with
    the message queue's manager          the deployment's QueueManager (deployment/operations/queue_manager.py):
                                         its own `_publish` (the backend method python-socketio's PubSubManager
                                         calls) and `_subscribe`: a publish dropped, a subscription made again
and a logging filter on python-socketio's logger for the message-queue errors it reports.

Events no handler takes are not seen: python-socketio drops them before any handler. deployment/operations/limits.py
puts a catch-all handler on every namespace, so in the deployment they are counted, as `_unknown` (every event a
catch-all takes is: clients cannot grow the label set).

Only python-socketio's own pub/sub managers (RedisManager, ...: not what the deployment makes, but a server of
your own may have one) need a hook into their internals, to see a publish they dropped:
deployment/patches/socketio_hooks.py, pinned; with a python-socketio version it was not verified against,
install() refuses (ConfigError, one line naming the versions and the way out) rather than count nothing.
Per event the cost is two clock reads and two metric updates (the event's series are found at registration).
"""

from __future__ import annotations

import json
import logging
from time import perf_counter

import socketio
from socketio import exceptions as sio_exceptions

from deployment.operations import logs, metrics
from deployment.operations.queue_manager import QueueManager
from deployment.patches import pins, socketio_hooks
from deployment.settings import ConfigError

REFUSALS = (sio_exceptions.ConnectionRefusedError, ConnectionRefusedError)
LIFECYCLE = ("connect", "disconnect")
UNKNOWN = "_unknown"  # the label of events a catch-all handler takes

# Engine.IO's 400 messages (python-engineio server.py, limits.guard_requests) -> a bounded label
BAD_REQUEST_REASONS = {
    None: "bad_request",
    "Bad Request": "bad_request",
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
        if message.startswith(("Invalid session", "Session is disconnected", "Session not found")):
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


def refusal(manager):
    """The one line that stops instrument.install() when the message-queue counters could not be counted (a pub/sub
    manager of python-socketio's own, with a python-socketio version deployment/patches/socketio_hooks.py was not
    verified against), else None."""
    if not isinstance(manager, socketio.PubSubManager) or isinstance(manager, QueueManager):
        return None
    wrong = pins.mismatches(socketio_hooks.VERIFIED)
    if not wrong:
        return None
    found = ", ".join(f"{dist} {version or 'not installed'}" for dist, version in wrong.items())
    verified = ", ".join(f"{dist} {'/'.join(versions)}" for dist, versions in socketio_hooks.VERIFIED.items())
    return (
        f"the metrics cannot count the lost publishes of {type(manager).__name__}: {found} is not a version "
        f"deployment/patches/socketio_hooks.py was verified against ({verified}); install {verified} "
        "(requirements.txt), or use the deployment's message queue (REDIS_URL, deployment/operations/queue_manager.py)"
    )


def install(socketio_, app):
    """Instruments the python-socketio server that socketio.init_app(app) just made (once per server): the
    metrics and the connection log lines. ConfigError (one line, refusal()) if they cannot all run."""
    server = socketio_.server
    door = getattr(server, "_deployment_door", None)
    if door is not None and door.observe:
        return
    message = refusal(server.manager)
    if message:
        raise ConfigError(message)  # before anything is wrapped here: the server is left as it is
    door = handler_door(server)
    door.observe = True
    metrics.set_instance(app.config["SETTINGS"].instance_name)
    metrics.CONNECTED.engineio_server = server.eio
    _wrap_emit(server)
    _count_bad_requests(server.eio)
    _count_queue_errors(server)
    if not any(isinstance(f, QueueErrorCounter) for f in server.logger.filters):
        server.logger.addFilter(QueueErrorCounter())
    # every series known now starts at 0, so rate() and alerts work before the first occurrence
    for namespace, events in server.handlers.items():
        if namespace == "*":
            continue
        for event in events:
            if event != "*":
                metrics.event_metrics(namespace, event)
    for reason in ("refused", "invalid_session", "unsupported_version", "other", *BAD_REQUEST_REASONS.values()):
        metrics.HANDSHAKE_FAILURES.labels(reason)
    for operation in ("publish_retry", "publish_lost", "receive", "listener"):
        metrics.MESSAGE_QUEUE_ERRORS.labels(operation)


# --- every handler, wrapped as it is registered ---------------------------------------------------------------


def handler_door(server):
    """The HandlerDoor of a python-socketio server (made and installed on the first call)."""
    door = getattr(server, "_deployment_door", None)
    if door is None:
        door = server._deployment_door = HandlerDoor(server)
        door.install()
    return door


def add_connect_gate(server, gate):
    """gate(namespace, sid, environ) runs before every connection's own connect handler, to any namespace; it
    refuses by raising ConnectionRefusedError (auth.py's login gate)."""
    handler_door(server).gates.append(gate)


class HandlerDoor:
    """Wraps every handler of one python-socketio server as it is registered (see the module docstring).

    `gates` run before each connect; `observe` turns on the metrics and the log lines (instrument.install): until
    then a wrapper only runs the gates and the handler."""

    def __init__(self, server):
        self.server = server
        self.gates = []
        self.observe = False
        self.reasons = {}  # (sid, namespace) -> a disconnect's reason, while python-socketio retries without it

    def install(self):
        server = self.server
        original_on = server.on
        original_register = server.register_namespace
        door = self

        def on(event, handler=None, namespace=None):
            """python-socketio's Server.on, the handler wrapped."""
            if handler is None:

                def set_handler(handler):
                    on(event, handler, namespace)
                    return handler

                return set_handler
            return original_on(event, door.wrap(event, namespace or "/", handler), namespace=namespace)

        def register_namespace(namespace_handler):
            """python-socketio's Server.register_namespace, the namespace's trigger_event wrapped."""
            result = original_register(namespace_handler)
            door.wrap_namespace(namespace_handler)
            return result

        for namespace, events in list(server.handlers.items()):
            for event, handler in list(events.items()):
                original_on(event, self.wrap(event, namespace, handler), namespace=namespace)
        for namespace_handler in list(server.namespace_handlers.values()):
            self.wrap_namespace(namespace_handler)
        for event in LIFECYCLE:
            if event not in server.handlers.get("*", {}):
                original_on(event, self.lifecycle_of_any_namespace(event), namespace="*")
        server.on = on
        server.register_namespace = register_namespace

    # --- wrappers -------------------------------------------------------------------------------------------

    def wrap(self, event, namespace, handler):
        if getattr(handler, "deployment_door", None) is self:
            return handler
        if event in LIFECYCLE:
            wrapped = self.lifecycle_wrapper(event, namespace, handler)
        elif event == "*" or namespace == "*":
            wrapped = self.catch_all_wrapper(event, namespace, handler)
        else:
            wrapped = self.event_wrapper(event, namespace, handler)
        wrapped.deployment_door = self
        wrapped.__wrapped__ = handler
        return wrapped

    def event_wrapper(self, event, namespace, handler):
        """handlers[namespace][event], called as handler(sid, *data): its series found once, here."""
        door = self
        received, latency, _errors = metrics.event_metrics(namespace, event)

        def on_event(*args):
            if not door.observe:
                return handler(*args)
            received.inc()
            start = perf_counter()
            try:
                return handler(*args)
            except Exception:
                door.failed(event, namespace, args[0] if args else "", event)
                raise
            finally:
                latency.observe(perf_counter() - start)

        return on_event

    def catch_all_wrapper(self, event, namespace, handler):
        """handlers[namespace]["*"] (args: event, sid, ...), handlers["*"][event] (namespace, sid, ...) and
        handlers["*"]["*"] (event, namespace, sid, ...)."""
        door = self
        any_event, any_namespace = event == "*", namespace == "*"

        def on_any(*args):
            at = 0
            real_event, real_namespace = event, namespace
            if any_event:
                real_event, at = args[0], 1
            if any_namespace:
                real_namespace, at = args[at], at + 1
            sid = args[at] if len(args) > at else ""
            label = UNKNOWN if any_event else real_event
            return door.event(handler, args, real_event, real_namespace, sid, label)

        return on_any

    def lifecycle_wrapper(self, event, namespace, handler):
        """handlers[namespace]["connect" or "disconnect"] (args: sid, ...), or handlers["*"][...] (namespace,
        sid, ...)."""
        any_namespace = namespace == "*"
        lifecycle = self.connect if event == "connect" else self.disconnect

        def on_lifecycle(*args):
            if any_namespace:
                return lifecycle(handler, args, args[0], args[1:], explicit=True)
            return lifecycle(handler, args, namespace, args, explicit=True)

        return on_lifecycle

    def lifecycle_of_any_namespace(self, event):
        """handlers["*"][event] where the app has none: a class-based namespace's handler if there is one (what
        python-socketio would call), else only the gate, the log line and the series."""
        door, server = self, self.server
        lifecycle = self.connect if event == "connect" else self.disconnect

        def on_lifecycle(namespace, sid, *rest):
            target = server.namespace_handlers.get(namespace)
            if target is not None:
                door.wrap_namespace(target)  # (done at registration; not if it was put there by hand)
                return target.trigger_event(event, sid, *rest)
            target = server.namespace_handlers.get("*")
            if target is not None:
                door.wrap_namespace(target)
                return target.trigger_event(event, namespace, sid, *rest)
            return lifecycle(None, (), namespace, (sid, *rest), explicit=True)

        # (`"*" in server.handlers` lets no client connect to a namespace "*": a packet's namespace starts with "/")
        on_lifecycle.deployment_door = self
        return on_lifecycle

    def wrap_namespace(self, namespace_handler):
        """A class-based namespace: its public trigger_event(event, *args), on the instance."""
        original = namespace_handler.trigger_event
        if getattr(original, "deployment_door", None) is self:
            return
        # registered before on another server (one SocketIO bound to a new app): that door's gates are not this one's
        while getattr(original, "deployment_door", None) is not None:
            original = original.__wrapped__
        door = self
        key = namespace_handler.namespace
        any_namespace = key == "*"

        def trigger_event(event, *args):
            namespace, rest = (args[0], args[1:]) if any_namespace else (key, args)
            call_args = (event, *args)
            if event == "connect":
                return door.connect(original, call_args, namespace, rest, explicit=False)
            if event == "disconnect":
                return door.disconnect(original, call_args, namespace, rest, explicit=False)
            known = isinstance(event, str) and hasattr(namespace_handler, f"on_{event}")
            sid = rest[0] if rest else ""
            return door.event(original, call_args, event, namespace, sid, event if known else UNKNOWN)

        trigger_event.deployment_door = self
        trigger_event.__wrapped__ = original
        namespace_handler.trigger_event = trigger_event

    # --- what each call does ----------------------------------------------------------------------------------

    def event(self, call, args, event, namespace, sid, label):
        if not self.observe:
            return call(*args)
        received, latency, _errors = metrics.event_metrics(namespace, label)
        received.inc()
        start = perf_counter()
        try:
            return call(*args)
        except Exception:
            self.failed(event, namespace, sid, label)
            raise
        finally:
            latency.observe(perf_counter() - start)

    def connect(self, call, args, namespace, rest, explicit):
        """rest: (sid, environ, auth) or, when python-socketio retries the legacy signature, (sid, environ)."""
        sid = rest[0] if rest else ""
        environ = rest[1] if len(rest) > 1 else None
        retried_next = len(rest) == 3 and rest[2] is None  # a TypeError: python-socketio calls again without auth
        if not self.observe:
            for gate in self.gates:
                gate(namespace, sid, environ)
            return call(*args) if call is not None else None
        latency = metrics.event_metrics(namespace, "connect")[1]
        start = perf_counter()
        try:
            for gate in self.gates:
                gate(namespace, sid, environ)
            result = call(*args) if call is not None else None
        except REFUSALS as exc:
            self.observe_latency(latency, start)
            self.refused(namespace, sid, environ, getattr(exc, "error_args", {}).get("message") or str(exc))
            raise
        except TypeError:
            if not retried_next:
                self.observe_latency(latency, start)
                self.failed("connect", namespace, sid, "connect", environ)
            raise
        except Exception:
            self.observe_latency(latency, start)
            self.failed("connect", namespace, sid, "connect", environ)
            raise
        self.observe_latency(latency, start)
        if result is False:
            self.refused(namespace, sid, environ, "connect handler returned False")
        else:
            fields = self.client_fields(sid, namespace, environ)
            logs.socket_event("connect", transport=self.transport(sid, namespace), **fields)
        return result

    def disconnect(self, call, args, namespace, rest, explicit):
        """rest: (sid, reason) or, when python-socketio retries a function handler's legacy signature, (sid,)."""
        sid = rest[0] if rest else ""
        if not self.observe:
            return call(*args) if call is not None else None
        key = (sid, namespace)
        reason = rest[1] if len(rest) > 1 else self.reasons.pop(key, "")
        fields = self.client_fields(sid, namespace)  # before the handler: the environ goes with the client
        latency = metrics.event_metrics(namespace, "disconnect")[1]
        start = perf_counter()
        try:
            return call(*args) if call is not None else None
        except TypeError:
            if explicit and len(rest) > 1:  # python-socketio calls the handler again without the reason
                self.reasons[key] = reason
                start = None
            else:
                self.failed("disconnect", namespace, sid, "disconnect")
            raise
        except Exception:
            self.failed("disconnect", namespace, sid, "disconnect")
            raise
        finally:
            if start is not None:
                self.observe_latency(latency, start)
                logs.socket_event("disconnect", reason=str(reason), **fields)

    @staticmethod
    def observe_latency(latency, start):
        latency.observe(perf_counter() - start)

    def refused(self, namespace, sid, environ, reason):
        metrics.HANDSHAKE_FAILURES.labels("refused").inc()
        fields = self.client_fields(sid, namespace, environ)
        logs.socket_event("refused", logging.WARNING, reason=reason, **fields)

    def failed(self, event, namespace, sid, label, environ=None):
        """A handler raised: count it, log it with its traceback (the exception then goes on as before)."""
        metrics.event_metrics(namespace, label)[2].inc()
        fields = self.client_fields(sid, namespace, environ)
        logs.socket_event("handler_error", logging.ERROR, exc_info=True, handler=str(event)[:100], **fields)

    def client_fields(self, sid, namespace, environ=None):
        if environ is None:
            try:
                environ = self.server.get_environ(sid, namespace)
            except (KeyError, TypeError):
                environ = None
        return {"sid": sid, "namespace": namespace, "client": logs.client_address(environ)}

    def transport(self, sid, namespace):
        try:
            return self.server.transport(sid, namespace)
        except (KeyError, TypeError):
            return "unknown"


# --- emits, Engine.IO 400s, the message queue ---------------------------------------------------------------------


def _wrap_emit(server):
    original = server.emit

    def emit(event, *args, **kwargs):
        metrics.emitted(kwargs.get("namespace") or "/", event)
        return original(event, *args, **kwargs)

    server.emit = emit


def _count_bad_requests(eio):
    """Every Engine.IO 400 answer, by reason: the public handle_request() of this server object, its status and
    its body (python-engineio answers 400 with the message as a JSON string)."""
    original = eio.handle_request

    def handle_request(environ, start_response):
        status = []

        def start(code, headers, *exc_info):
            status.append(code)
            return start_response(code, headers, *exc_info)

        body = original(environ, start)
        if status and status[0].startswith("400"):
            _count_bad_request(_message_of(body))
        return body

    eio.handle_request = handle_request


def _message_of(body):
    try:
        message = json.loads(b"".join(body)) if isinstance(body, list) else None
    except (ValueError, TypeError):
        return None
    return message if isinstance(message, str) else None


def _count_bad_request(message=None):
    metrics.HANDSHAKE_FAILURES.labels(bad_request_reason(message)).inc()


def _count_queue_errors(server):
    """A publish that returns None was dropped (the deployment's QueueManager drops while Redis is away;
    python-socketio's RedisManager gives up after a retry), and every subscription after the first one replaces a
    lost one (QueueManager's _subscribe). The deployment's QueueManager: its own methods, wrapped here; a pub/sub
    manager of python-socketio's own: through deployment/patches/socketio_hooks.py (pinned, refusal() checked it).
    The in-process manager publishes nothing."""
    manager = server.manager
    if not isinstance(manager, socketio.PubSubManager):
        return
    publish, subscribe = _queue_hooks()
    if not isinstance(manager, QueueManager):
        socketio_hooks.install(server, publish=publish, subscribe=subscribe)
        return
    own_publish, own_subscribe = manager._publish, manager._subscribe
    manager._publish = lambda data: publish(own_publish, data)

    def resubscribe():
        subscribe()
        return own_subscribe()

    manager._subscribe = resubscribe


def _queue_hooks():
    """(publish, subscribe): publish(original, data) counts a publish that returned None, subscribe() every
    subscription after the first one."""
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
