"""python-engineio reads every request's query string with urllib's parse_qs, which unquotes each name and
value: about 3.5 µs a request, twice per long-polling echo. Engine.IO clients' query strings (EIO, transport,
t, sid) hold no escapes; for a string without "%" or "+", splitting it gives parse_qs' own answer (tested on
random strings), and any other string still goes to parse_qs."""

import urllib
import urllib.parse

from engineio import server as engineio_server

URLLIB_PARSE_QS = urllib.parse.parse_qs


def parse_qs(qs, keep_blank_values=False, strict_parsing=False, *args, **kwargs):
    """urllib.parse.parse_qs, without unquoting when there is nothing to unquote."""
    if args or kwargs or keep_blank_values or strict_parsing or not isinstance(qs, str) or "%" in qs or "+" in qs:
        return URLLIB_PARSE_QS(qs, keep_blank_values, strict_parsing, *args, **kwargs)
    fields = {}
    for field in qs.split("&"):
        name, _, value = field.partition("=")
        if value:  # parse_qs drops fields without "=" and blank values
            if name in fields:
                fields[name].append(value)
            else:
                fields[name] = [value]
    return fields


class UrllibParse:
    """urllib.parse as python-engineio's server module sees it: the same but for parse_qs."""

    parse_qs = staticmethod(parse_qs)

    def __getattr__(self, name):
        return getattr(urllib.parse, name)


class Urllib:
    parse = UrllibParse()

    def __getattr__(self, name):
        return getattr(urllib, name)


VERIFIED = {"python-engineio": ("4.15.1",)}
REPLACES = ["engineio.server.urllib"]


def install(socketio=None, app=None, settings=None):
    """python-engineio's server module (it does `import urllib` and calls urllib.parse.parse_qs) gets this one."""
    engineio_server.urllib = Urllib()
