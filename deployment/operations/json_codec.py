"""The JSON module Socket.IO packets are encoded and decoded with, through the libraries' public door: SocketIO's
`json=` option (python-socketio and python-engineio take it and set it for both protocols' packets). This module:
orjson, which takes a third of the time of the standard library's, falling back to python-engineio's own module
(the standard library's json with an integer-size limit) wherever orjson would answer differently:

- loads: text orjson refuses (NaN, lone surrogates, ...) and text with 19 or more digits in a row, since
  orjson reads integers beyond 64 bits as floats;
- dumps: whatever orjson cannot encode exactly as json would (integers beyond 64 bits, subclasses of str,
  int, dict and list, dataclasses, dates), so those raise TypeError as before or encode as before.
The remaining differences: orjson writes non-ASCII characters as UTF-8 instead of \\u escapes (the same
JSON), NaN and infinities as null, and it also encodes UUIDs.

Deployment.init_app passes `json=json_option(settings)` to socketio.init_app: this module when the speedup is
on, else python-engineio's own module, the libraries' default. Always explicitly: the option sets a class
attribute of each library's Packet, process-wide, so an app built after one with the codec gets the standard
module back. install() (deployment/operations/speedups.py) then only reports whether the codec is in use.
"""

import logging
import re
import sys

import orjson
from engineio import json as engineio_json
from engineio import packet as engineio_packet

from deployment.patches import pins

log = logging.getLogger("patches")

DUMPS_OPTIONS = (
    orjson.OPT_NON_STR_KEYS
    | orjson.OPT_PASSTHROUGH_SUBCLASS
    | orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_DATETIME
)
LONG_DIGITS = {str: re.compile(r"[0-9]{19}"), bytes: re.compile(rb"[0-9]{19}")}
JSONDecodeError = engineio_json.JSONDecodeError


def dumps(obj, **kwargs):
    try:
        return orjson.dumps(obj, option=DUMPS_OPTIONS).decode()
    except TypeError:
        return engineio_json.dumps(obj, **kwargs)


def loads(text, **kwargs):
    pattern = LONG_DIGITS.get(type(text))
    if kwargs or pattern is None or pattern.search(text):
        return engineio_json.loads(text, **kwargs)
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return engineio_json.loads(text)


DOOR = "SocketIO(json=...)"  # python-socketio's and python-engineio's json option, through Flask-SocketIO
SETS = ["socketio.packet.Packet.json", "engineio.packet.Packet.json"]  # what the door sets: where tools read it
# orjson's answers, around which the fallbacks above are drawn. No python-socketio/python-engineio pin: json= is
# their public option (base_server.py), and in_use() only reads back what it set.
VERIFIED = {"orjson": ("3.13.0",)}
ROWS = [("echo_ws", "app_cpu_ms_per_1000"), ("echo_polling", "app_cpu_ms_per_1000")]  # deployment/patches/README.md
PROVEN_BY = "tests/deployment/test_json_codec.py"


def wanted(settings):
    """Whether this configuration asks for the codec and the installed orjson is a verified one (no log line:
    the speedups installer logs the mismatch)."""
    return settings.speedups and "json_codec" not in settings.speedups_skip and not pins.mismatches(VERIFIED)


def apps_own(socketio):
    """The json module the app gave its SocketIO object itself (SocketIO(json=...)), else None."""
    own = getattr(socketio, "server_options", {}).get("json")
    return None if own in (None, sys.modules[__name__], engineio_json) else own


def json_option(settings, socketio=None):
    """SocketIO's json= for socketio.init_app: the app's own json= if it set one, else this module, or
    python-engineio's own (the libraries' default)."""
    own = apps_own(socketio)
    if own is not None:
        return own
    return sys.modules[__name__] if wanted(settings) else engineio_json


def in_use(socketio):
    """Whether both protocols' packets of this server encode and decode with this module."""
    codec = sys.modules[__name__]
    server = getattr(socketio, "server", None)
    packet_class = getattr(server, "packet_class", None)
    return getattr(packet_class, "json", None) is codec and getattr(engineio_packet.Packet, "json", None) is codec


def install(socketio, app, settings):
    """Reports whether the codec is on: Deployment.init_app has already passed it as SocketIO's json= option."""
    if in_use(socketio):
        return True
    if apps_own(socketio) is not None:
        log.info("speedup json_codec stays off: the app gives SocketIO its own json module (SocketIO(json=...))")
        return False
    log.warning(
        "speedup json_codec stays off: SocketIO's json option is not deployment.operations.json_codec (pass "
        "json=json_codec.json_option(settings) to socketio.init_app, as Deployment.init_app does)"
    )
    return False
