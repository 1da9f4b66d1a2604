"""gevent-websocket 0.10.1 (its last release) runs pure-Python loops on every WebSocket frame. Three fixes,
each giving the same bytes as the original (tests/test_websocket_speedups.py):

- UTF-8 validation of text frames: gevent-websocket uses wsaccel's C validator by itself once wsaccel is
  installed (requirements.txt), instead of a Python loop over every byte (run twice per message).
- Header.unmask_payload XORs each client frame with its mask byte by byte in Python: wsaccel's C masker.
- Stream.write is gevent's sendall(), which asks the kernel for SO_SNDBUF (one getsockopt syscall) on every
  frame: one send() instead, and sendall() only for what a full socket buffer leaves over.
"""

try:
    from geventwebsocket import websocket as gws
    from wsaccel.xormask import XorMaskerSimple
except ImportError:  # the simple-websocket variant (bench/run template_simplews): nothing to speed up
    gws = None


def mask_payload(header, payload):
    return bytearray(XorMaskerSimple(header.mask).process(bytes(payload)))


def send_all(sock):
    send, sendall = sock.send, sock.sendall

    def write(data):
        sent = send(data)
        if sent < len(data):
            sendall(memoryview(data)[sent:])

    return write


def stream_init(stream, handler):
    stream.handler = handler
    stream.read = handler.rfile.read
    stream.write = send_all(handler.socket)


def install():
    if gws is None:
        return
    gws.Header.mask_payload = gws.Header.unmask_payload = mask_payload
    gws.Stream.__init__ = stream_init
