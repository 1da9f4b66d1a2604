"""Prometheus metrics of one instance, served at /metrics (scrape each instance directly; HAProxy refuses
/metrics on the public port).

    socketio_connected_clients{transport}        Engine.IO connections open now, polling or websocket
    socketio_queued_packets                      packets this instance holds for clients that have not taken
                                                 them yet (a client reading slower than it is sent to)
    socketio_queued_packets_max                  the most held for any one client
    socketio_events_received_total{namespace,event}  events from clients (unknown names count as "_unknown")
    socketio_events_emitted_total{namespace,event}   emit() calls made by this instance (one per call, whatever
                                                    the number of recipients)
    socketio_handshake_failures_total{reason}    connect handlers that refused (reason="refused") and
                                                 Engine.IO 400 answers (reason="invalid_session", "bad_origin",
                                                 "unexpected_http", ...)
    socketio_message_queue_errors_total{operation}  publish_lost (a message for the other instances was dropped),
                                                 publish_retry, receive (the subscription was lost), listener
    socketio_handler_errors_total{namespace,event}  handlers that raised
    socketio_handler_seconds{namespace,event}    handler latency (histogram), connect/disconnect included
    socketio_instance_info{name}                 1, labelled with INSTANCE_NAME

The counting itself happens in deployment/operations/instrument.py.
"""

from __future__ import annotations

from bisect import bisect_left

from flask import Blueprint, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

bp = Blueprint("metrics", __name__)

disable_created_metrics()  # no *_created series: half the output, and nothing here needs them

# Seconds; Socket.IO handlers are usually sub-millisecond, ones that do I/O take milliseconds.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
MAX_EMITTED_NAMES = 200  # emit() names are the app's own, but a dynamic name must not grow the label set forever

HANDSHAKE_FAILURES = Counter(
    "socketio_handshake_failures",
    "Refused Socket.IO connections and Engine.IO requests answered 400",
    ["reason"],
)
MESSAGE_QUEUE_ERRORS = Counter(
    "socketio_message_queue_errors", "Message queue (Redis) publishes dropped and subscriptions lost", ["operation"]
)
INSTANCE_INFO = Gauge("socketio_instance_info", "This instance's name (INSTANCE_NAME)", ["name"])


CONNECTED_HELP = "Open Engine.IO connections by transport"
QUEUED_HELP = "Packets held in memory for clients that have not taken them yet"
QUEUED_MAX_HELP = "The most packets held for any one client"


class ConnectedClients:
    """socketio_connected_clients and socketio_queued_packets*, computed at scrape time from the Engine.IO
    server: nothing on the hot path."""

    def __init__(self):
        self.engineio_server = None

    def describe(self):
        return [
            GaugeMetricFamily("socketio_connected_clients", CONNECTED_HELP),
            GaugeMetricFamily("socketio_queued_packets", QUEUED_HELP),
            GaugeMetricFamily("socketio_queued_packets_max", QUEUED_MAX_HELP),
        ]

    def collect(self):
        counts = {"polling": 0, "websocket": 0}
        queued = queued_max = 0
        server = self.engineio_server
        if server is not None:
            for socket in list(server.sockets.values()):
                if not socket.closed:
                    counts["websocket" if socket.upgraded else "polling"] += 1
                    waiting = socket.queue.qsize()
                    queued += waiting
                    queued_max = max(queued_max, waiting)
        family = GaugeMetricFamily("socketio_connected_clients", CONNECTED_HELP, labels=["transport"])
        for transport, value in counts.items():
            family.add_metric([transport], value)
        yield family
        yield GaugeMetricFamily("socketio_queued_packets", QUEUED_HELP, value=queued)
        yield GaugeMetricFamily("socketio_queued_packets_max", QUEUED_MAX_HELP, value=queued_max)


CONNECTED = ConnectedClients()
REGISTRY.register(CONNECTED)


# The per-event series are plain numbers updated in place and turned into metric families at scrape time:
# prometheus_client's own children take a lock on every update, a few percent of a worker's CPU per event.
# One worker runs every greenlet on one thread, and an update never yields, so no lock is needed.
class Count:
    __slots__ = ("value",)

    def __init__(self):
        self.value = 0.0

    def inc(self, amount=1):
        self.value += amount


class Latency:
    """A histogram over LATENCY_BUCKETS; counts[i] holds the observations in bucket i only (not cumulative)."""

    __slots__ = ("counts", "sum")

    def __init__(self):
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, seconds):
        self.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1  # le: a value equal to a bound is in its bucket
        self.sum += seconds


_event_children = {}  # (namespace, event) -> (received, latency, errors)
_emitted_children = {}  # (namespace, event) -> emitted


def event_metrics(namespace, event):
    """(received counter, latency histogram, error counter) of one event; `received` is None for connect and
    disconnect, which are not events sent by the client."""
    children = _event_children.get((namespace, event))
    if children is None:
        children = (None if event in ("connect", "disconnect") else Count(), Latency(), Count())
        _event_children[(namespace, event)] = children
    return children


def emitted(namespace, event):
    child = _emitted_children.get((namespace, event))
    if child is None:
        if len(_emitted_children) >= MAX_EMITTED_NAMES:
            event = "_other"
        child = _emitted_children.setdefault((namespace, event), Count())
    child.inc()


class EventStats:
    """socketio_events_received_total, socketio_events_emitted_total, socketio_handler_errors_total and
    socketio_handler_seconds from the numbers above."""

    def describe(self):
        return list(self.collect())

    def collect(self):
        labels = ["namespace", "event"]
        received = CounterMetricFamily(
            "socketio_events_received", "Socket.IO events received from clients", labels=labels
        )
        emitted_ = CounterMetricFamily(
            "socketio_events_emitted", "Socket.IO emit() calls made by this instance", labels=labels
        )
        errors = CounterMetricFamily("socketio_handler_errors", "Socket.IO event handlers that raised", labels=labels)
        seconds = HistogramMetricFamily("socketio_handler_seconds", "Socket.IO event handler latency", labels=labels)
        bounds = [floatToGoString(b) for b in LATENCY_BUCKETS] + ["+Inf"]
        for key, (count, latency, error) in list(_event_children.items()):
            if count is not None:
                received.add_metric(key, count.value)
            errors.add_metric(key, error.value)
            cumulative, buckets = 0, []
            for bound, n in zip(bounds, list(latency.counts), strict=True):
                cumulative += n
                buckets.append((bound, cumulative))
            seconds.add_metric(key, buckets, latency.sum)
        for key, count in list(_emitted_children.items()):
            emitted_.add_metric(key, count.value)
        return [received, emitted_, errors, seconds]


REGISTRY.register(EventStats())


def set_instance(name):
    INSTANCE_INFO.clear()
    INSTANCE_INFO.labels(name).set(1)


@bp.get("/metrics")
def metrics():
    return Response(generate_latest(REGISTRY), content_type=CONTENT_TYPE_LATEST)
