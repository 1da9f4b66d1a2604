"""The JSON module Socket.IO packets are encoded and decoded with (SocketIO's `json=` option): orjson, which
takes a third of the time of the standard library's, falling back to python-engineio's own module (the
standard library's json with an integer-size limit) wherever orjson would answer differently:

- loads: text orjson refuses (NaN, lone surrogates, ...) and text with 19 or more digits in a row, since
  orjson reads integers beyond 64 bits as floats;
- dumps: whatever orjson cannot encode exactly as json would (integers beyond 64 bits, subclasses of str,
  int, dict and list, dataclasses, dates), so those raise TypeError as before or encode as before.
The remaining differences: orjson writes non-ASCII characters as UTF-8 instead of \\u escapes (the same
JSON), NaN and infinities as null, and it also encodes UUIDs.
"""

import re

import orjson
from engineio import json as engineio_json
from engineio import packet as engineio_packet

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


# Socket.IO and Engine.IO packets' JSON module: what SocketIO(json=...) sets, process-wide, in both libraries.
VERIFIED = {"orjson": ("3.13.0",), "python-socketio": ("5.18.1",), "python-engineio": ("4.15.1",)}
REPLACES = ["socketio.packet.Packet.json", "engineio.packet.Packet.json"]
ROWS = [("echo_ws", "app_cpu_ms_per_1000"), ("echo_polling", "app_cpu_ms_per_1000")]  # deployment/patches/README.md
PROVEN_BY = "tests/deployment/test_json_codec.py"


def install(socketio, app, settings):
    import sys

    socketio.server.packet_class.json = sys.modules[__name__]
    engineio_packet.Packet.json = sys.modules[__name__]
