"""gevent's pywsgi parses every request's headers with the email package (http.client.parse_headers): about
18% of a worker's CPU on long-polling echo, where every echo is two HTTP requests (py-spy, bench/run --profile
--profile-scenarios echo_polling). A faster path for the plain case, with no parsing of its own otherwise:

- The lines are read by http.client's own reader, with its limits (65,536 bytes a line, 100 headers).
- If every line is a plain `Name: value` (the name an RFC 9110 token, the value visible ASCII, Latin-1,
  spaces or tabs; CRLF at the end), the message gets the (name, value) pairs the email parser gives such
  lines: the value with leading blanks and the CRLF removed.
- Any other line (folded, bare CR or LF, control characters, no colon, ...) and the email package parses
  them all, as before. tests/test_request_headers.py compares both on the requests real clients send, and
  on random and malformed ones.
"""

import re
from email.parser import Parser
from http import client

from gevent import pywsgi

PLAIN_HEADER = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[\t\x20-\x7e\x80-\xff]*\r\n")
GEVENT_MESSAGE_CLASS = pywsgi.WSGIHandler.MessageClass
OldMessage = getattr(pywsgi, "OldMessage", None)  # pywsgi's http.client.HTTPMessage with its old (Python 2) API


def parse(fp):
    """pywsgi's headers_factory(fp): the request's headers as an OldMessage."""
    try:
        lines = client._read_headers(fp)
    except client.LineTooLong:  # as pywsgi: a 400 for the request
        message = OldMessage()
        message.status = "Line too long"
        return message
    if lines[-1] == b"\r\n" and all(PLAIN_HEADER.fullmatch(line) for line in lines[:-1]):
        message = OldMessage()
        for line in lines[:-1]:
            name, value = line[:-2].decode("iso-8859-1").split(":", 1)
            message._headers.append((name, value.lstrip(" \t")))
        message._payload = ""
        return message
    return Parser(_class=OldMessage).parsestr(b"".join(lines).decode("iso-8859-1"))


def message_class(handler, fp, *args):
    return parse(fp)


def install():
    """pywsgi's request handlers (gevent-websocket's, and gunicorn's plain gevent worker's) parse with parse()."""
    if OldMessage is not None and hasattr(client, "_read_headers"):
        pywsgi.WSGIHandler.MessageClass = message_class
