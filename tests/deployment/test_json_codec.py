"""deployment/operations/json_codec.py: orjson where it answers as python-engineio's json module would, that module
elsewhere; passed through SocketIO's public json= option, and python-engineio's own module again when it is off."""

import dataclasses
import datetime
import json
import math
import subprocess
import sys

import pytest
from engineio import json as engineio_json
from markupsafe import Markup

from deployment.operations import json_codec
from deployment.settings import Settings

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


def build(caplog, **env):
    """An app of the deployment layer with these settings; returns the speedups it logged as on."""
    from stack_app import create_app

    caplog.clear()
    with caplog.at_level("INFO", logger="patches"):
        create_app(Settings.from_env({"APP_ENV": "development", "INSTANCE_NAME": "unit", **env}))
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith(("speedups on: ", "SPEEDUPS=off"))]
    return line


def packet_json():
    """The JSON module each library's packets use now (what SocketIO(json=...) sets, process-wide)."""
    from engineio import packet as engineio_packet
    from socketio import packet as socketio_packet
    from stack_app import socketio

    assert socketio.server.packet_class is socketio_packet.Packet
    return socketio_packet.Packet.json, engineio_packet.Packet.json


def test_the_app_encodes_packets_with_it_through_the_json_option(app, sio_test_client):
    from stack_app import socketio

    assert socketio.server_options["json"] is json_codec  # Flask-SocketIO's init_app got it as json=
    assert packet_json() == (json_codec, json_codec)
    assert json_codec.install(socketio, app, app.config["SETTINGS"]) is True
    client = sio_test_client()
    assert client.emit("echo", {"big": 2**70, "text": "héllo"}, callback=True) == {"big": 2**70, "text": "héllo"}


@pytest.mark.parametrize("env", [{"SPEEDUPS": "off"}, {"SPEEDUPS_SKIP": "json_codec"}], ids=repr)
def test_off_after_on_in_the_same_process_brings_back_engineio_json(caplog, env):
    """json= sets a class attribute: an app built without the codec after one with it must get the standard
    module back, in both libraries (python-engineio's own module: the libraries' default)."""
    assert "json_codec" in build(caplog)
    assert packet_json() == (json_codec, json_codec)
    line = build(caplog, **env)
    assert "json_codec" not in line  # the start log does not claim it
    assert packet_json() == (engineio_json, engineio_json)
    assert "json_codec" in build(caplog)  # and on again
    assert packet_json() == (json_codec, json_codec)


def test_the_libraries_default_is_engineio_json():
    """The control for the test above: in a fresh interpreter, before any json= option, both libraries' packets
    use python-engineio's own module, the one passed when the codec is off."""
    code = (
        "import engineio.json, engineio.packet, socketio.packet; "
        "print(socketio.packet.Packet.json is engineio.json, engineio.packet.Packet.json is engineio.json)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == ["True", "True"], result.stderr


def test_an_orjson_it_was_not_verified_against_keeps_engineio_json(caplog, monkeypatch):
    monkeypatch.setattr(json_codec, "VERIFIED", {"orjson": ("0.0.0.fake",)})
    settings = Settings.from_env({"APP_ENV": "development"})
    assert json_codec.json_option(settings) is engineio_json
    line = build(caplog)
    assert "json_codec" not in line
    assert any(r.getMessage().startswith("patch json_codec stays off: orjson ") for r in caplog.records)
    assert packet_json() == (engineio_json, engineio_json)


def test_install_reports_off_when_the_codec_is_not_the_json_option(caplog):
    """install() assigns nothing: with SocketIO's json option left at engineio's module it says it is off."""
    from flask import Flask
    from flask_socketio import SocketIO

    socketio = SocketIO()
    socketio.init_app(Flask("other"), json=engineio_json)
    try:
        with caplog.at_level("WARNING", logger="patches"):
            assert json_codec.install(socketio, None, None) is False
        assert packet_json()[1] is engineio_json
        assert any("speedup json_codec stays off" in r.getMessage() for r in caplog.records)
    finally:
        build(caplog)  # the process-wide default of the other tests: the deployment layer's app, codec on


def test_the_apps_own_json_module_is_kept():
    """SocketIO(json=...) of the app's own wins over the speedup (which then says it stays off)."""
    import json as stdlib_json

    from flask import Flask
    from flask_socketio import SocketIO

    from deployment.extension import Deployment
    from deployment.settings import Settings

    app, socketio = Flask("own_json"), SocketIO(json=stdlib_json)
    Deployment().init_app(app, socketio, Settings.from_env({"APP_ENV": "development"}))
    assert socketio.server.packet_class.json is stdlib_json
    assert socketio.test_client(app).emit("echo", {"a": [1, "é"]}, callback=True) == {"a": [1, "é"]}
