"""realtime/handshake_environ.py: the environ python-socketio keeps per connection lets go of the handshake's body
stream (with pywsgi: the read buffer of an HTTP connection the client has left). Through the real WSGI stack."""

import io
import json

from realtime import handshake_environ

HANDSHAKE = "/socket.io/?EIO=4&transport=polling"


class RequestStream(io.BytesIO):
    """The handshake request's own body stream (pywsgi's: an Input over the connection's rfile)."""


def handshake(app):
    response = app.test_client().get(HANDSHAKE, input_stream=RequestStream())
    assert response.status_code == 200, response.data
    return json.loads(response.data[1:])["sid"]  # "0{...}": an Engine.IO OPEN packet


def kept_environ(app):
    server = app.extensions["socketio"].server
    return server.environ[handshake(app)]


def test_the_kept_environ_has_an_empty_body_stream(app):
    environ = kept_environ(app)
    assert type(environ["wsgi.input"]) is io.BytesIO and environ["wsgi.input"].read() == b""
    assert environ["PATH_INFO"] == "/socket.io/" and environ["REQUEST_METHOD"] == "GET"  # the rest is kept


def test_control_without_it_the_kept_environ_holds_the_request_stream(app):
    eio = app.extensions["socketio"].server.eio
    wrapped = eio.handlers["connect"]
    eio.on("connect", app.extensions["socketio"].server._handle_eio_connect)  # socketio's own handler
    try:
        assert isinstance(kept_environ(app)["wsgi.input"], RequestStream)
    finally:
        eio.on("connect", wrapped)


def test_events_still_see_the_handshake_request(app, sio_test_client):
    client = sio_test_client()
    assert client.is_connected()
    assert client.emit("echo", "still works", callback=True) == "still works"


def test_install_wraps_the_connect_handler_once_per_server(app):
    eio = app.extensions["socketio"].server.eio
    assert eio.handlers["connect"].__qualname__.startswith(handshake_environ.install.__name__)
