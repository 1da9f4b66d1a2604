"""Logging: one line per record, as text (default) or JSON (LOG_FORMAT=json), every line naming the instance.

Connection events go to the `realtime.socket` logger, one line each, with their fields kept apart so the JSON
format can carry them as keys:

    connect     sid, namespace, client, transport
    disconnect  sid, namespace, client, reason
    refused     sid, namespace, client, reason
    error       sid, namespace, client, event (+ the traceback)

`client` is the first address of X-Forwarded-For (HAProxy adds it), else the peer address.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

socket_log = logging.getLogger("realtime.socket")

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(instance)s]: %(message)s"
# the libraries log some connection problems (bad origin, unknown session, Redis errors) at ERROR
LIBRARY_LOGGERS = ("socketio.server", "engineio.server")


class InstanceFilter(logging.Filter):
    """Stamps every record with the instance name (INSTANCE_NAME, else the host name)."""

    def __init__(self, instance):
        super().__init__()
        self.instance = instance

    def filter(self, record):
        record.instance = self.instance
        return True


def fields_of(record):
    return getattr(record, "fields", None) or {}


class TextFormatter(logging.Formatter):
    """`<time> INFO realtime.socket [app1]: connect sid=... client=...`: the fields follow as key=value."""

    def __init__(self):
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record):
        line = super().formatMessage(record)
        extra = fields_of(record)
        if extra:
            # `event` repeats the message on connection lines: the text format leaves it out
            line += "".join(
                f" {key}={format_value(value)}"
                for key, value in extra.items()
                if not (key == "event" and value == record.msg)
            )
        return line


def format_value(value):
    text = str(value)
    if not text or any(c in text for c in ' "='):
        return json.dumps(text, ensure_ascii=False)
    return text


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, instance, msg, then the record's fields."""

    def format(self, record):
        data = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "instance": getattr(record, "instance", ""),
            "msg": record.getMessage(),
        }
        for key, value in fields_of(record).items():
            data.setdefault(key, value)
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            data["exc"] = record.exc_text
        return json.dumps(data, ensure_ascii=False, default=str)


class Handler(logging.StreamHandler):
    """Our stderr handler: recognised on a second setup() (tests build many apps in one process)."""


def setup(settings, stream=None):
    """Configures the root logger once per process; later calls only update format, level and instance."""
    fmt = getattr(settings, "log_format", "text")
    # Threads are greenlets here: LogRecord would make a threading._DummyThread for each greenlet that logs,
    # and no format of ours shows the thread.
    logging.logThreads = False
    root = logging.getLogger()
    handler = next((h for h in root.handlers if isinstance(h, Handler)), None)
    if handler is None:
        handler = Handler(stream or sys.stderr)
        root.addHandler(handler)
    elif stream is not None:
        handler.setStream(stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    for old in list(handler.filters):
        handler.removeFilter(old)
    handler.addFilter(InstanceFilter(settings.instance_name))
    root.setLevel(settings.log_level)
    for name in LIBRARY_LOGGERS:
        # python-socketio/engineio add a plain StreamHandler of their own when the level is unset;
        # setting it (to their default) keeps their lines in our format, through the root handler
        library_logger = logging.getLogger(name)
        if library_logger.level == logging.NOTSET:
            library_logger.setLevel(logging.ERROR)
    return handler


def client_address(environ):
    """The client's address: the first hop of X-Forwarded-For (set by HAProxy), else the TCP peer.

    The first hop is what the client's side claims; HAProxy appends the address it saw, so behind a single
    HAProxy a client can put any value in front. Use `remote` (HAProxy's address) or the last hop if you
    need an address you can trust."""
    if not environ:
        return ""
    forwarded = environ.get("HTTP_X_FORWARDED_FOR", "")
    if forwarded:
        first = forwarded.split(",", 1)[0].strip()
        if first:
            return first
    return environ.get("REMOTE_ADDR", "")


def socket_event(kind, level=logging.INFO, exc_info=None, **fields):
    """One line on the `realtime.socket` logger; `kind` is both the message and the `event` field."""
    if socket_log.isEnabledFor(level):
        socket_log.log(level, kind, extra={"fields": {"event": kind, **fields}}, exc_info=exc_info)
