"""gevent-websocket's request handler logs every HTTP request itself (INFO on the `geventwebsocket.handler`
logger, a fixed format, HAProxy's address as the client) and never calls gunicorn's access log, so gunicorn's
ACCESS_LOG and ACCESS_LOG_FORMAT had no effect and each long-polling request cost a log line. This handler
logs through gunicorn's access log instead, as gunicorn's own gevent handler does: off by default, on with
ACCESS_LOG=- (stdout) or a file, in ACCESS_LOG_FORMAT."""

from gunicorn.workers.ggevent import PyWSGIHandler


def with_gunicorn_access_log(handler_class, log):
    """log: the worker's gunicorn logger, asked directly (through the server's, pywsgi's LoggingLogAdapter
    forwards each attribute with __getattr__: about 1.5% of a long-polling worker for a disabled access log)."""

    class AccessLogHandler(handler_class):
        def get_environ(self):
            environ = super().get_environ()
            environ["RAW_URI"] = self.path  # as gunicorn's handler does: its access log reads it
            return environ

        def log_request(self):
            if log.access_log_enabled:  # gunicorn's check, computed once per configuration
                PyWSGIHandler.log_request(self)

    AccessLogHandler.__name__ = AccessLogHandler.__qualname__ = f"AccessLog{handler_class.__name__}"
    return AccessLogHandler


def install(worker):
    """From gunicorn's post_worker_init: the worker makes its servers with worker.wsgi_handler afterwards.
    gunicorn's plain gevent worker (without gevent-websocket, docs/configuration.md) has its own parser and
    access log."""
    handler = getattr(worker, "wsgi_handler", None)
    if handler is not None and handler.log_request is not PyWSGIHandler.log_request:
        worker.wsgi_handler = with_gunicorn_access_log(handler, worker.log)
