"""deployment/patches/json_codec.py: orjson where it answers as python-engineio's json module would, that module
elsewhere."""

import dataclasses
import datetime
import json
import math

import pytest
from engineio import json as engineio_json
from markupsafe import Markup

from deployment.patches import json_codec

VALUES = [
    None,
    True,
    0,
    -1,
    2**63 - 1,
    2**64 + 5,
    -(2**70),
    1.5,
    1e300,
    "hello",
    "héllo ✓ \U0001f600",
    "",
    [1, "two", [3.0, None]],
    {"a": 1, "b": {"c": [True, False]}},
    {1: "int key", None: "null key", 2.5: "float key"},
    {True: "bool key", False: "another"},
    ("a", "tuple"),
    Markup("<b>markup</b>"),  # a str subclass
    {"id": 123456789012345678901234567890},
]


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_dumps_then_loads_gives_what_json_gives(value):
    ours = json_codec.loads(json_codec.dumps(value, separators=(",", ":")))
    reference = engineio_json.loads(json.dumps(value, separators=(",", ":")))
    assert ours == reference
    assert type(ours) is type(reference)


TEXTS = [
    '{"a":1}',
    '"\\u00e9"',
    "[12345678901234567890123]",  # beyond 64 bits: an exact int, not a float
    '{"n": 1e5, "m": -0.0}',
    "NaN",
    "[Infinity, -Infinity]",
    '"\\ud800"',  # a lone surrogate
    "[1,2",
    "",
    "1" * 150,  # engineio's integer-size limit
    b'{"a":1}',
]


@pytest.mark.parametrize("text", TEXTS, ids=repr)
def test_loads_answers_or_fails_like_engineio_json(text):
    try:
        expected = engineio_json.loads(text)
    except ValueError as exc:
        with pytest.raises(type(exc)):
            json_codec.loads(text)
        return
    got = json_codec.loads(text)
    if isinstance(expected, float) and math.isnan(expected):
        assert math.isnan(got)
    else:
        assert got == expected and type(got) is type(expected)


@dataclasses.dataclass
class Point:
    x: int


@pytest.mark.parametrize("value", [Point(1), datetime.datetime(2026, 1, 1), object()], ids=repr)
def test_what_json_refuses_is_still_refused(value):
    with pytest.raises(TypeError):
        json.dumps(value)
    with pytest.raises(TypeError):
        json_codec.dumps(value)


def test_the_app_encodes_packets_with_it(app):
    from socketio import packet

    assert packet.Packet.json is json_codec
