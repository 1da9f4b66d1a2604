"""gevent's pywsgi, the HTTP server under gevent-websocket's worker, on long-polling, where every echo is two
HTTP requests (py-spy and strace on a worker, bench/run --profile --profile-scenarios echo_polling):

Request headers: pywsgi parsed each request's headers with the email package (http.client.parse_headers),
about 18% of the worker's CPU. A faster path for the plain case, with no parsing of its own otherwise:
- The lines are read by http.client's own reader, with its limits (65,536 bytes a line, 100 headers).
- If every line is a plain `Name: value` (the name an RFC 9110 token, the value visible ASCII, Latin-1,
  spaces or tabs; CRLF at the end), the message gets the (name, value) pairs the email parser gives such
  lines: the value with leading blanks and the CRLF removed.
- Any other line (folded, bare CR or LF, control characters, no colon, ...) and the email package parses
  them all, as before.

Responses: pywsgi sent the headers and the body with a sendall() each, and gevent's sendall() asks the
kernel for SO_SNDBUF every time: four system calls and two TCP segments for a 13-byte poll answer. A body of
up to 64 KB now goes in the same write as the headers, and a write is one send(), with sendall() only for
what the socket buffer leaves over.

Also, for the same requests: the environ's HTTP_* entries come from a plain message's (name, value) pairs,
without pywsgi formatting each header into a line and splitting it again; the Date header is formatted
once per second, not once per response.

tests/deployment/test_pywsgi_speedups.py compares both with pywsgi's own: the parsed message on real clients'
requests and on random and malformed ones; the bytes on the wire.
"""

import re
from email.parser import Parser
from http import client

from gevent import pywsgi

from deployment.patches import pins
from deployment.patches.websocket_writes import send_whole

TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"  # an RFC 9110 header name
VALUE = r"[\t\x20-\x7e\x80-\xff]*"  # visible ASCII, Latin-1, spaces and tabs: no CR, LF or other control
PLAIN_HEADERS = re.compile(rf"(?:{TOKEN}:{VALUE}\r\n)*\r\n")  # a whole block of plain lines, blank line last
PLAIN_HEADER = re.compile(rf"({TOKEN}):[ \t]*({VALUE})\r\n")  # one of them: (name, value without leading blanks)
GEVENT_MESSAGE_CLASS = pywsgi.WSGIHandler.MessageClass
GEVENT_WRITE_WITH_HEADERS = pywsgi.WSGIHandler._write_with_headers
GEVENT_SENDALL = pywsgi.WSGIHandler._sendall
GEVENT_ENVIRON_HEADERS = pywsgi.WSGIHandler._headers
GEVENT_FORMAT_DATE_TIME = pywsgi.format_date_time
LAST_DATE = [None, b""]  # the second the Date header was last formatted for, and its value
SMALL_BODY = 64 * 1024  # copied after the headers: cheaper than a second send() up to far beyond a poll's size
OldMessage = getattr(pywsgi, "OldMessage", None)  # pywsgi's http.client.HTTPMessage with its old (Python 2) API


class PlainMessage(OldMessage or object):
    """A message of plain header lines only: no folded value, no CR or LF in any (see parse).

    Lookups by name go to a dict of each name's first value, made on the first lookup: the email package's
    Message.get lower-cases every header name on each lookup (about 0.4 µs), and pywsgi and gevent-websocket
    look up about eight per request. Every Message method that changes the headers drops the dict."""

    def get(self, name, failobj=None):
        first = self.__dict__.get("_first")
        if first is None:
            first = self._first = {}
            for key, value in self._headers:
                first.setdefault(key.lower(), value)
        return first.get(name.lower(), failobj)

    def __contains__(self, name):
        return self.get(name) is not None

    def _changed(method):
        def changes_headers(self, *args, **kwargs):
            self.__dict__.pop("_first", None)
            return method(self, *args, **kwargs)

        changes_headers.__name__ = method.__name__
        return changes_headers

    if OldMessage is not None:
        __setitem__ = _changed(OldMessage.__setitem__)
        __delitem__ = _changed(OldMessage.__delitem__)
        set_raw = _changed(OldMessage.set_raw)
        replace_header = _changed(OldMessage.replace_header)
        set_boundary = _changed(OldMessage.set_boundary)
    del _changed


def parse(fp):
    """pywsgi's headers_factory(fp): the request's headers as an OldMessage."""
    try:
        lines = client._read_headers(fp)
    except client.LineTooLong:  # as pywsgi: a 400 for the request
        message = OldMessage()
        message.status = "Line too long"
        return message
    text = b"".join(lines).decode("iso-8859-1")
    if PLAIN_HEADERS.fullmatch(text):
        message = PlainMessage()
        message._headers = PLAIN_HEADER.findall(text)
        message._payload = ""
        return message
    return Parser(_class=OldMessage).parsestr(text)


def message_class(handler, fp, *args):
    return parse(fp)


def environ_headers(handler):
    """pywsgi's WSGIHandler._headers: the request's headers as (HTTP_NAME, value) for the environ. For plain
    lines, without pywsgi's formatting of each header into a line and splitting it again."""
    if type(handler.headers) is not PlainMessage:
        yield from GEVENT_ENVIRON_HEADERS(handler)
        return
    for name, value in handler.headers._headers:
        if "_" not in name:  # as pywsgi: such headers are dropped (HTTP_X_A could come from X-A or X_A)
            key = name.replace("-", "_").upper()
            if key != "CONTENT_TYPE" and key != "CONTENT_LENGTH":
                yield "HTTP_" + key, value.strip()


def date_header_value(timestamp):
    """pywsgi's format_date_time (the Date header), formatted once per second instead of per response."""
    second = int(timestamp)
    if LAST_DATE[0] != second:
        LAST_DATE[:] = [second, GEVENT_FORMAT_DATE_TIME(second)]
    return LAST_DATE[1]


def write_with_headers(handler, data):
    """pywsgi's WSGIHandler._write_with_headers, with a small body in the same write as the headers."""
    handler.headers_sent = True
    handler.finalize_headers()
    towrite = bytearray(b"HTTP/1.1 ")  # status and headers are latin-1 bytes already (pywsgi's start_response)
    towrite += handler.status
    towrite += b"\r\n"
    for header, value in handler.response_headers:
        towrite += header
        towrite += b": "
        towrite += value
        towrite += b"\r\n"
    towrite += b"\r\n"
    if data and not handler.response_use_chunked and len(data) <= SMALL_BODY:
        towrite += data
        handler._sendall(towrite)
    else:
        handler._sendall(towrite)
        handler._write(data)


def sendall(handler, data):
    """pywsgi's WSGIHandler._sendall: one send(), and sendall() only for what the socket buffer leaves over."""
    try:
        send_whole(handler.socket, data)
    except OSError as ex:
        handler.status = f"socket error: {ex}"
        if handler.code > 0:
            handler.code = -handler.code
        raise
    handler.response_length += len(data)


# python: the email package's Message internals, http.client's _read_headers
VERIFIED = {"gevent": ("26.9.0",), "python": ("3.11",)}
REPLACES = [
    "gevent.pywsgi.WSGIHandler.MessageClass",
    "gevent.pywsgi.WSGIHandler._headers",
    "gevent.pywsgi.format_date_time",
    "gevent.pywsgi.WSGIHandler._write_with_headers",
    "gevent.pywsgi.WSGIHandler._sendall",
]
ROWS = [("echo_polling", "app_cpu_ms_per_1000")]  # the benchmark rows it serves (deployment/patches/README.md)
PROVEN_BY = "tests/deployment/test_pywsgi_speedups.py"  # same answers as the library's own code


ASYNC_MODES = ("gevent",)  # pywsgi serves only under gevent (flask run's threading: werkzeug's server)


def install(socketio=None, app=None, settings=None):
    """pywsgi's request handlers (gevent-websocket's, and gunicorn's plain gevent worker's) use these from now on;
    True. Without pywsgi's OldMessage or http.client's _read_headers (which VERIFIED's versions have) none of
    them: one line, False."""
    if OldMessage is None or not hasattr(client, "_read_headers"):
        return pins.stays_off("pywsgi_speedups", "gevent.pywsgi.OldMessage or http.client._read_headers is missing")
    pywsgi.WSGIHandler.MessageClass = message_class
    pywsgi.WSGIHandler._headers = environ_headers
    pywsgi.format_date_time = date_header_value
    pywsgi.WSGIHandler._write_with_headers = write_with_headers
    pywsgi.WSGIHandler._sendall = sendall
    return True
