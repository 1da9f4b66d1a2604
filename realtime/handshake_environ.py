"""python-socketio keeps the WSGI environ of each connection's first request for as long as the connection
lives: Flask-SocketIO builds every event's `request` from it. A client that starts on long-polling (the
default) has long left that request's HTTP connection once it upgrades, yet the kept environ's `wsgi.input`
still holds the connection's read buffer (pywsgi's rfile: 8 KB, dropped by pywsgi but never closed). That
is about 8 KB of a connection's memory (tracemalloc on a worker holding 1,000 clients).

The kept environ gets an empty body instead. Handlers see the same request: an Engine.IO handshake is a GET
without a body, so its input has nothing left to read.
"""

import io


def install(socketio):
    eio = socketio.server.eio
    handle_connect = eio.handlers["connect"]

    def on_connect(eio_sid, environ, *args):
        environ["wsgi.input"] = io.BytesIO()
        return handle_connect(eio_sid, environ, *args)

    eio.on("connect", on_connect)
